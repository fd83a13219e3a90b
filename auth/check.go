package auth

import (
	"bytes"
	"slices"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Snapshot is the auth state compiled for checking: each user's roles
// merged into the key intervals it may read and write. It is immutable; a
// node swaps in a new one as its meta replica applies a change. A nil
// Snapshot is auth disabled.
type Snapshot struct {
	state *tesserapb.AuthState // read only; nil: the empty state
	users map[string]*user
}

type user struct {
	name         string
	passwordHash []byte
	noPassword   bool
	roles        []string
	root         bool
	read, write  []interval // merged, sorted, disjoint
}

// interval is [start, end); end nil is the end of the keyspace.
type interval struct{ start, end []byte }

// Compile builds the Snapshot of st (which it does not keep a reference
// into beyond reading: the caller must not change st afterwards).
func Compile(st *tesserapb.AuthState) *Snapshot {
	s := &Snapshot{users: map[string]*user{}, state: st}
	for _, u := range st.GetUsers() {
		cu := &user{name: u.Name, passwordHash: u.PasswordHash, noPassword: u.NoPassword, roles: u.Roles, root: hasRole(u, Root)}
		for _, name := range u.Roles {
			r := findRole(st, name)
			if r == nil {
				continue
			}
			for _, p := range r.Permissions {
				iv := permInterval(p.Key, p.RangeEnd)
				if p.Type == Read || p.Type == ReadWrite {
					cu.read = append(cu.read, iv)
				}
				if p.Type == Write || p.Type == ReadWrite {
					cu.write = append(cu.write, iv)
				}
			}
		}
		cu.read, cu.write = merge(cu.read), merge(cu.write)
		s.users[u.Name] = cu
	}
	return s
}

// st is the state (nil for a nil Snapshot; the getters read nil as empty).
func (s *Snapshot) st() *tesserapb.AuthState {
	if s == nil {
		return nil
	}
	return s.state
}

// Enabled reports whether authentication is on.
func (s *Snapshot) Enabled() bool { return s.st().GetEnabled() }

// Revision is etcd's auth revision of the snapshot: a new auth store's is
// 1, and every change but turning auth on adds one.
func (s *Snapshot) Revision() uint64 { return s.st().GetRevision() + 1 }

// Changes counts the changes the snapshot has seen (auth.Apply).
func (s *Snapshot) Changes() uint64 { return s.st().GetChanges() }

// State is the auth state the snapshot was compiled from; read only.
func (s *Snapshot) State() *tesserapb.AuthState {
	if st := s.st(); st != nil {
		return st
	}
	return &tesserapb.AuthState{}
}

// CheckPassword returns nil when name's password is password; etcd's
// "authentication failed" otherwise (an unknown user, a user without a
// password, a wrong password alike).
func (s *Snapshot) CheckPassword(name, password string) error {
	if !s.Enabled() {
		return rpctypes.ErrGRPCAuthNotEnabled
	}
	u := s.users[name]
	if u == nil || u.noPassword {
		return rpctypes.ErrGRPCAuthFailed
	}
	if bcrypt.CompareHashAndPassword(u.passwordHash, []byte(password)) != nil {
		return rpctypes.ErrGRPCAuthFailed
	}
	return nil
}

// Exists reports whether a user of that name exists.
func (s *Snapshot) Exists(name string) bool { return s != nil && s.users[name] != nil }

// HasRole reports whether the user has the role.
func (s *Snapshot) HasRole(name, role string) bool {
	u := s.users[name]
	return u != nil && slices.Contains(u.roles, role)
}

// Admin returns nil when auth is off or the user has the root role:
// etcd's IsAdminPermitted.
func (s *Snapshot) Admin(name string) error {
	if !s.Enabled() {
		return nil
	}
	if name == "" {
		return rpctypes.ErrGRPCUserEmpty
	}
	u := s.users[name]
	if u == nil {
		return rpctypes.ErrGRPCUserNotFound
	}
	if !u.root {
		return rpctypes.ErrGRPCPermissionDenied
	}
	return nil
}

// CanRead returns nil when the user may read every key of etcd's interval
// [key, rangeEnd) (rangeEnd empty: key alone; "\x00": to the end).
func (s *Snapshot) CanRead(name string, key, rangeEnd []byte) error {
	return s.permitted(name, key, rangeEnd, false)
}

// CanWrite is CanRead for writes.
func (s *Snapshot) CanWrite(name string, key, rangeEnd []byte) error {
	return s.permitted(name, key, rangeEnd, true)
}

func (s *Snapshot) permitted(name string, key, rangeEnd []byte, write bool) error {
	if !s.Enabled() {
		return nil
	}
	if name == "" {
		return rpctypes.ErrGRPCUserEmpty
	}
	u := s.users[name]
	if u == nil {
		return rpctypes.ErrGRPCPermissionDenied
	}
	if u.root {
		return nil
	}
	ivs := u.read
	if write {
		ivs = u.write
	}
	if covered(ivs, permInterval(key, rangeEnd)) { // a request's keys read as a permission's
		return nil
	}
	return rpctypes.ErrGRPCPermissionDenied
}

// permInterval is a permission's (or a request's) keys as an interval.
func permInterval(key, rangeEnd []byte) interval {
	switch {
	case len(rangeEnd) == 0:
		return interval{key, append(slices.Clone(key), 0)}
	case bytes.Equal(rangeEnd, []byte{0}):
		return interval{key, nil}
	}
	return interval{key, rangeEnd}
}

// endLess orders interval ends: nil (the end of the keyspace) is the largest.
func endLess(a, b []byte) bool {
	switch {
	case a == nil:
		return false
	case b == nil:
		return true
	}
	return bytes.Compare(a, b) < 0
}

// merge sorts intervals and joins those that overlap or touch.
func merge(ivs []interval) []interval {
	if len(ivs) == 0 {
		return nil
	}
	slices.SortFunc(ivs, func(a, b interval) int { return bytes.Compare(a.start, b.start) })
	out := []interval{ivs[0]}
	for _, iv := range ivs[1:] {
		last := &out[len(out)-1]
		if last.end == nil || bytes.Compare(iv.start, last.end) <= 0 {
			if endLess(last.end, iv.end) {
				last.end = iv.end
			}
			continue
		}
		out = append(out, iv)
	}
	return out
}

// covered reports whether one of the merged intervals holds all of r.
func covered(ivs []interval, r interval) bool {
	for _, iv := range ivs {
		if bytes.Compare(iv.start, r.start) <= 0 && !endLess(iv.end, r.end) {
			return true
		}
	}
	return false
}
