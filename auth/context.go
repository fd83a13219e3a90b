package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

type userKey struct{}

// WithUser records in ctx the user a request was authenticated as.
func WithUser(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, userKey{}, name)
}

// UserOf returns the user recorded by WithUser ("" when none).
func UserOf(ctx context.Context) string {
	name, _ := ctx.Value(userKey{}).(string)
	return name
}

// Caller works out who is calling: the user WithUser recorded; else the
// user of the token in the call's metadata ("token", as clientv3 sends it,
// or "authorization", as etcd's gateway passes it on) — a JWT when j is
// set, or a simple token (which the node also mints for its own calls) —
// with etcd's "invalid auth token" (or, for a JWT minted before the auth
// state changed, "revision of auth store is old") when it is not valid;
// else, when certCN is set, the common name of the client's verified TLS
// certificate; else "" (nobody: every check but the ones open to all
// refuses with etcd's "user name is empty").
func Caller(ctx context.Context, s *Snapshot, now time.Time, certCN bool, j *JWT) (string, error) {
	if name := UserOf(ctx); name != "" {
		return name, nil
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, field := range []string{rpctypes.TokenFieldNameGRPC, rpctypes.TokenFieldNameSwagger} {
			if ts := md.Get(field); len(ts) > 0 {
				if j != nil {
					user, err := j.Check(ts[0], s.Revision())
					if err == nil || errors.Is(err, rpctypes.ErrGRPCAuthOldRevision) {
						return user, err
					}
				}
				return s.UserOfToken(ts[0], now)
			}
		}
	}
	if certCN {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
				return commonName(ti.State), nil
			}
		}
	}
	return "", nil
}

// commonName is the CN of the verified client certificate, "" without one.
func commonName(st tls.ConnectionState) string {
	for _, chain := range st.VerifiedChains {
		if len(chain) > 0 && chain[0].Subject.CommonName != "" {
			return chain[0].Subject.CommonName
		}
	}
	return ""
}
