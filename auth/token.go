package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Simple tokens. etcd's simple tokens are random strings each member
// remembers; a Tessera client may send its token to any node, so a token
// carries its user and expiry, signed with the cluster's token key (made
// when auth is first enabled, kept in the meta state). The signature also
// covers the user's password hash: changing a password ends its tokens, as
// etcd's does, and deleting the user ends them too. Tokens are opaque to
// clients; clientv3 authenticates again when a token is refused.

var tokenEncoding = base64.RawURLEncoding

// MintToken returns a token for name, valid until now+ttl.
func (s *Snapshot) MintToken(name string, now time.Time, ttl time.Duration) (string, error) {
	u := s.users[name]
	if !s.Enabled() || u == nil || len(s.state.GetTokenKey()) == 0 {
		return "", rpctypes.ErrGRPCAuthFailed
	}
	expiry := strconv.FormatInt(now.Add(ttl).Unix(), 10)
	user := tokenEncoding.EncodeToString([]byte(name))
	return user + "." + expiry + "." + tokenEncoding.EncodeToString(s.tokenMAC(user, expiry, u.passwordHash)), nil
}

// UserOfToken returns the user a token names, or etcd's "invalid auth
// token" when it is malformed, forged, expired, or its user is gone or
// changed password.
func (s *Snapshot) UserOfToken(token string, now time.Time) (string, error) {
	user, rest, ok1 := strings.Cut(token, ".")
	expiry, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || !s.Enabled() {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	nameBytes, err1 := tokenEncoding.DecodeString(user)
	mac, err2 := tokenEncoding.DecodeString(sig)
	until, err3 := strconv.ParseInt(expiry, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || now.Unix() > until {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	u := s.users[string(nameBytes)]
	if u == nil || !hmac.Equal(mac, s.tokenMAC(user, expiry, u.passwordHash)) {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	return u.name, nil
}

func (s *Snapshot) tokenMAC(user, expiry string, passwordHash []byte) []byte {
	m := hmac.New(sha256.New, s.state.GetTokenKey())
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(expiry))
	m.Write([]byte{0})
	m.Write(passwordHash)
	return m.Sum(nil)
}
