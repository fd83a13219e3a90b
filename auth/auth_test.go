package auth

import (
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func cmd(op tesserapb.AuthCommand_Op, user, role string) *tesserapb.AuthCommand {
	return &tesserapb.AuthCommand{Op: op, User: user, Role: role, PasswordHash: []byte("h")}
}

func grant(role string, typ int32, key, end string) *tesserapb.AuthCommand {
	return &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_GRANT_PERMISSION, Role: role,
		Permission: &tesserapb.AuthPermission{Type: typ, Key: []byte(key), RangeEnd: []byte(end)}}
}

// TestApplyFollowsEtcd: each command's refusals, in etcd's order, and the
// revision counting only changes.
func TestApplyFollowsEtcd(t *testing.T) {
	st := &tesserapb.AuthState{}
	steps := []struct {
		c    *tesserapb.AuthCommand
		want tesserapb.AuthResult
	}{
		{cmd(tesserapb.AuthCommand_ENABLE, "", ""), tesserapb.AuthResult_AUTH_ROOT_USER_MISSING},
		{cmd(tesserapb.AuthCommand_USER_ADD, "", ""), tesserapb.AuthResult_AUTH_USER_EMPTY},
		{cmd(tesserapb.AuthCommand_USER_ADD, Root, ""), tesserapb.AuthResult_AUTH_OK},
		{cmd(tesserapb.AuthCommand_USER_ADD, Root, ""), tesserapb.AuthResult_AUTH_USER_EXISTS},
		{cmd(tesserapb.AuthCommand_ENABLE, "", ""), tesserapb.AuthResult_AUTH_ROOT_ROLE_MISSING},
		{cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, Root, Root), tesserapb.AuthResult_AUTH_OK},
		{cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, Root, Root), tesserapb.AuthResult_AUTH_UNCHANGED},
		{cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, Root, "nope"), tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND},
		{cmd(tesserapb.AuthCommand_ROLE_ADD, "", ""), tesserapb.AuthResult_AUTH_ROLE_EMPTY},
		{cmd(tesserapb.AuthCommand_ROLE_ADD, "", "r"), tesserapb.AuthResult_AUTH_OK},
		{cmd(tesserapb.AuthCommand_ROLE_ADD, "", "r"), tesserapb.AuthResult_AUTH_ROLE_EXISTS},
		{grant("r", Read, "", ""), tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT},
		{grant("r", Read, "b", "a"), tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT},
		{grant("x", Read, "a", "b"), tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND},
		{grant("r", Read, "a", "c"), tesserapb.AuthResult_AUTH_OK},
		{&tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_REVOKE_PERMISSION, Role: "r", Permission: &tesserapb.AuthPermission{Key: []byte("a")}}, tesserapb.AuthResult_AUTH_PERMISSION_NOT_GRANTED},
		{cmd(tesserapb.AuthCommand_USER_REVOKE_ROLE, Root, "r"), tesserapb.AuthResult_AUTH_ROLE_NOT_GRANTED},
		{cmd(tesserapb.AuthCommand_ENABLE, "", ""), tesserapb.AuthResult_AUTH_OK},
		{cmd(tesserapb.AuthCommand_USER_DELETE, Root, ""), tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT},
		{cmd(tesserapb.AuthCommand_USER_REVOKE_ROLE, Root, Root), tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT},
		{cmd(tesserapb.AuthCommand_ROLE_DELETE, "", Root), tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT},
		{cmd(tesserapb.AuthCommand_USER_DELETE, "ghost", ""), tesserapb.AuthResult_AUTH_USER_NOT_FOUND},
	}
	changes := uint64(0)
	for i, s := range steps {
		if got := Apply(st, s.c); got != s.want {
			t.Fatalf("step %d (%v): %v, want %v", i, s.c, got, s.want)
		}
		if s.want == tesserapb.AuthResult_AUTH_OK && s.c.Op != tesserapb.AuthCommand_ENABLE {
			changes++
		}
		if st.Revision != changes {
			t.Fatalf("step %d: revision %d, want %d", i, st.Revision, changes)
		}
	}
	if Apply(st, cmd(tesserapb.AuthCommand_ENABLE, "", "")) != tesserapb.AuthResult_AUTH_OK || st.Revision != changes {
		t.Fatalf("enabling twice changed the revision: %d", st.Revision)
	}
}

// TestPermissions: a user's roles merge into intervals; a request is
// permitted only when one merged interval holds all of its keys.
func TestPermissions(t *testing.T) {
	st := &tesserapb.AuthState{}
	for _, c := range []*tesserapb.AuthCommand{
		cmd(tesserapb.AuthCommand_USER_ADD, Root, ""), cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, Root, Root),
		cmd(tesserapb.AuthCommand_USER_ADD, "u", ""),
		cmd(tesserapb.AuthCommand_ROLE_ADD, "", "a"), cmd(tesserapb.AuthCommand_ROLE_ADD, "", "b"),
		grant("a", Read, "k1", "k5"), grant("b", ReadWrite, "k5", "k7"), grant("b", Write, "single", ""),
		grant("a", Read, "open/", "\x00"),
		cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, "u", "a"), cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, "u", "b"),
		cmd(tesserapb.AuthCommand_ENABLE, "", ""),
	} {
		if r := Apply(st, c); r != tesserapb.AuthResult_AUTH_OK {
			t.Fatalf("%v: %v", c, r)
		}
	}
	s := Compile(st)
	for _, c := range []struct {
		key, end string
		write    bool
		want     error
	}{
		{"k1", "", false, nil},
		{"k1", "k7", false, nil}, // two roles' intervals touch
		{"k0", "k2", false, rpctypes.ErrGRPCPermissionDenied},
		{"k1", "k8", false, rpctypes.ErrGRPCPermissionDenied},
		{"k1", "", true, rpctypes.ErrGRPCPermissionDenied},
		{"k5", "k7", true, nil},
		{"k6", "\x00", true, rpctypes.ErrGRPCPermissionDenied},
		{"single", "", true, nil},
		{"single", "singlf", true, rpctypes.ErrGRPCPermissionDenied},
		{"single", "single\x00", true, nil},
		{"open/x", "\x00", false, nil},
		{"open/", "open0", false, nil},
		{"open", "\x00", false, rpctypes.ErrGRPCPermissionDenied},
	} {
		var err error
		if c.write {
			err = s.CanWrite("u", []byte(c.key), []byte(c.end))
		} else {
			err = s.CanRead("u", []byte(c.key), []byte(c.end))
		}
		if !errors.Is(err, c.want) {
			t.Errorf("[%q, %q) write=%v: %v, want %v", c.key, c.end, c.write, err, c.want)
		}
	}
	if err := s.CanWrite(Root, []byte("anything"), []byte{0}); err != nil {
		t.Errorf("root: %v", err)
	}
	if err := s.CanRead("", []byte("k1"), nil); !errors.Is(err, rpctypes.ErrGRPCUserEmpty) {
		t.Errorf("no user: %v", err)
	}
	if err := s.Admin("u"); !errors.Is(err, rpctypes.ErrGRPCPermissionDenied) {
		t.Errorf("Admin(u): %v", err)
	}
}

// TestTokens: a token names its user until it expires, its user changes
// password or is deleted; a forged one is refused.
func TestTokens(t *testing.T) {
	st := &tesserapb.AuthState{}
	for _, c := range []*tesserapb.AuthCommand{
		cmd(tesserapb.AuthCommand_USER_ADD, Root, ""), cmd(tesserapb.AuthCommand_USER_GRANT_ROLE, Root, Root),
		cmd(tesserapb.AuthCommand_USER_ADD, "u", ""),
		{Op: tesserapb.AuthCommand_ENABLE, TokenKey: []byte("0123456789abcdef")},
	} {
		Apply(st, c)
	}
	now := time.Unix(1_000_000, 0)
	s := Compile(st)
	tok, err := s.MintToken("u", now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := s.UserOfToken(tok, now.Add(30*time.Second)); err != nil || u != "u" {
		t.Fatalf("UserOfToken: %q %v", u, err)
	}
	refused := func(what, tok string, s *Snapshot, at time.Time) {
		t.Helper()
		if _, err := s.UserOfToken(tok, at); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
			t.Errorf("%s: %v", what, err)
		}
	}
	refused("expired", tok, s, now.Add(2*time.Minute))
	refused("forged", tokenEncoding.EncodeToString([]byte(Root))+tok[len(tokenEncoding.EncodeToString([]byte("u"))):], s, now)
	refused("garbage", "abc", s, now)
	Apply(st, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_CHANGE_PASSWORD, User: "u", PasswordHash: []byte("other")})
	refused("after a password change", tok, Compile(st), now)
}
