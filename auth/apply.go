// Package auth is etcd's authentication and role-based access control over
// Tessera's meta range: the state (users, roles, permissions, whether auth is
// on) is part of the meta state, changed only by AuthCommands that every
// node's meta replica applies in log order (Apply), and compiled into an
// immutable Snapshot that the node's servers consult on every request.
package auth

import (
	"bytes"
	"slices"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Root is the name of the root user and of the root role, as in etcd: a
// user with the root role may do anything.
const Root = "root"

// Permission types, as etcd's authpb.Permission_Type numbers them.
const (
	Read      = 0
	Write     = 1
	ReadWrite = 2
)

// Apply applies one AuthCommand to st, which it changes only when the
// result is AUTH_OK (and then bumps its revision). It follows etcd's auth
// store rule for rule: the same refusals, in the same order.
func Apply(st *tesserapb.AuthState, c *tesserapb.AuthCommand) tesserapb.AuthResult {
	if c.GetOp() == tesserapb.AuthCommand_ENABLE && st.Enabled {
		return tesserapb.AuthResult_AUTH_OK // as etcd: nothing changes
	}
	res := apply(st, c)
	if res == tesserapb.AuthResult_AUTH_OK {
		st.Changes++
		// etcd's auth revision does not count turning auth on.
		if c.GetOp() != tesserapb.AuthCommand_ENABLE {
			st.Revision++
		}
	}
	return res
}

func apply(st *tesserapb.AuthState, c *tesserapb.AuthCommand) tesserapb.AuthResult {
	switch c.GetOp() {
	default: // NONE, or an operation this binary does not know
		return tesserapb.AuthResult_AUTH_UNCHANGED
	case tesserapb.AuthCommand_ENABLE:
		u := findUser(st, Root)
		if u == nil {
			return tesserapb.AuthResult_AUTH_ROOT_USER_MISSING
		}
		if !hasRole(u, Root) {
			return tesserapb.AuthResult_AUTH_ROOT_ROLE_MISSING
		}
		st.Enabled = true
		if len(st.TokenKey) == 0 {
			st.TokenKey = slices.Clone(c.GetTokenKey())
		}
	case tesserapb.AuthCommand_DISABLE:
		if !st.Enabled {
			return tesserapb.AuthResult_AUTH_UNCHANGED
		}
		st.Enabled = false
	case tesserapb.AuthCommand_USER_ADD:
		if c.GetUser() == "" {
			return tesserapb.AuthResult_AUTH_USER_EMPTY
		}
		if findUser(st, c.GetUser()) != nil {
			return tesserapb.AuthResult_AUTH_USER_EXISTS
		}
		u := &tesserapb.AuthUser{Name: c.GetUser(), NoPassword: c.GetNoPassword()}
		if !u.NoPassword {
			u.PasswordHash = slices.Clone(c.GetPasswordHash())
		}
		i := sort.Search(len(st.Users), func(i int) bool { return st.Users[i].Name >= u.Name })
		st.Users = slices.Insert(st.Users, i, u)
	case tesserapb.AuthCommand_USER_DELETE:
		if st.Enabled && c.GetUser() == Root {
			return tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT
		}
		if findUser(st, c.GetUser()) == nil {
			return tesserapb.AuthResult_AUTH_USER_NOT_FOUND
		}
		st.Users = slices.DeleteFunc(st.Users, func(u *tesserapb.AuthUser) bool { return u.Name == c.GetUser() })
	case tesserapb.AuthCommand_USER_CHANGE_PASSWORD:
		u := findUser(st, c.GetUser())
		if u == nil {
			return tesserapb.AuthResult_AUTH_USER_NOT_FOUND
		}
		if !u.NoPassword {
			u.PasswordHash = slices.Clone(c.GetPasswordHash())
		}
	case tesserapb.AuthCommand_USER_GRANT_ROLE:
		u := findUser(st, c.GetUser())
		if u == nil {
			return tesserapb.AuthResult_AUTH_USER_NOT_FOUND
		}
		if c.GetRole() != Root && findRole(st, c.GetRole()) == nil {
			return tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND
		}
		i, found := slices.BinarySearch(u.Roles, c.GetRole())
		if found {
			// etcd ignores a second grant of a role, and counts no change.
			return tesserapb.AuthResult_AUTH_UNCHANGED
		}
		u.Roles = slices.Insert(u.Roles, i, c.GetRole())
	case tesserapb.AuthCommand_USER_REVOKE_ROLE:
		if st.Enabled && c.GetUser() == Root && c.GetRole() == Root {
			return tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT
		}
		u := findUser(st, c.GetUser())
		if u == nil {
			return tesserapb.AuthResult_AUTH_USER_NOT_FOUND
		}
		i, found := slices.BinarySearch(u.Roles, c.GetRole())
		if !found {
			return tesserapb.AuthResult_AUTH_ROLE_NOT_GRANTED
		}
		u.Roles = slices.Delete(u.Roles, i, i+1)
	case tesserapb.AuthCommand_ROLE_ADD:
		if c.GetRole() == "" {
			return tesserapb.AuthResult_AUTH_ROLE_EMPTY
		}
		if findRole(st, c.GetRole()) != nil {
			return tesserapb.AuthResult_AUTH_ROLE_EXISTS
		}
		r := &tesserapb.AuthRole{Name: c.GetRole()}
		i := sort.Search(len(st.Roles), func(i int) bool { return st.Roles[i].Name >= r.Name })
		st.Roles = slices.Insert(st.Roles, i, r)
	case tesserapb.AuthCommand_ROLE_DELETE:
		if st.Enabled && c.GetRole() == Root {
			return tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT
		}
		if findRole(st, c.GetRole()) == nil {
			return tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND
		}
		st.Roles = slices.DeleteFunc(st.Roles, func(r *tesserapb.AuthRole) bool { return r.Name == c.GetRole() })
		for _, u := range st.Users {
			u.Roles = slices.DeleteFunc(u.Roles, func(r string) bool { return r == c.GetRole() })
		}
	case tesserapb.AuthCommand_ROLE_GRANT_PERMISSION:
		p := c.GetPermission()
		if p == nil {
			return tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT
		}
		if !ValidPermissionRange(p.Key, p.RangeEnd) {
			return tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT
		}
		r := findRole(st, c.GetRole())
		if r == nil {
			return tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND
		}
		i := sort.Search(len(r.Permissions), func(i int) bool { return bytes.Compare(r.Permissions[i].Key, p.Key) >= 0 })
		if i < len(r.Permissions) && bytes.Equal(r.Permissions[i].Key, p.Key) && bytes.Equal(r.Permissions[i].RangeEnd, p.RangeEnd) {
			r.Permissions[i].Type = p.Type
		} else {
			r.Permissions = slices.Insert(r.Permissions, i, proto.CloneOf(p))
		}
	case tesserapb.AuthCommand_ROLE_REVOKE_PERMISSION:
		p := c.GetPermission()
		r := findRole(st, c.GetRole())
		if r == nil {
			return tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND
		}
		n := len(r.Permissions)
		r.Permissions = slices.DeleteFunc(r.Permissions, func(q *tesserapb.AuthPermission) bool {
			return bytes.Equal(q.Key, p.GetKey()) && bytes.Equal(q.RangeEnd, p.GetRangeEnd())
		})
		if len(r.Permissions) == n {
			return tesserapb.AuthResult_AUTH_PERMISSION_NOT_GRANTED
		}
	}
	return tesserapb.AuthResult_AUTH_OK
}

// ValidPermissionRange is etcd's rule for a permission's interval: a key,
// and either no end (the key alone), an end above it, or "\x00" (to the
// end of the keyspace).
func ValidPermissionRange(key, rangeEnd []byte) bool {
	if len(key) == 0 {
		return false
	}
	return len(rangeEnd) == 0 || bytes.Compare(key, rangeEnd) < 0 || bytes.Equal(rangeEnd, []byte{0})
}

func findUser(st *tesserapb.AuthState, name string) *tesserapb.AuthUser {
	i := sort.Search(len(st.Users), func(i int) bool { return st.Users[i].Name >= name })
	if i < len(st.Users) && st.Users[i].Name == name {
		return st.Users[i]
	}
	return nil
}

func findRole(st *tesserapb.AuthState, name string) *tesserapb.AuthRole {
	i := sort.Search(len(st.Roles), func(i int) bool { return st.Roles[i].Name >= name })
	if i < len(st.Roles) && st.Roles[i].Name == name {
		return st.Roles[i]
	}
	return nil
}

func hasRole(u *tesserapb.AuthUser, role string) bool {
	_, found := slices.BinarySearch(u.Roles, role)
	return found
}
