package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// JWT is etcd's JWT token provider (--auth-token
// jwt,pub-key=FILE,priv-key=FILE,sign-method=METHOD,ttl=DURATION): a
// token is a JWT whose claims are the user, the auth revision it was
// minted at, and its expiry, signed with the private key (or, for HMAC
// methods, the key); any node with the public key verifies it. A node
// given only a public key verifies tokens and mints none. As in etcd, a
// token minted before a later change of the auth state is refused with
// "revision of auth store is old" (clientv3 then logs in again).
type JWT struct {
	method jwt.SigningMethod
	sign   any // nil: verify only
	verify any
	ttl    time.Duration
}

// DefaultJWTTTL is a JWT's lifetime without a ttl option, as etcd's.
const DefaultJWTTTL = 5 * time.Minute

// ParseAuthToken reads --auth-token: "simple" (nil, nil) or "jwt,…".
func ParseAuthToken(spec string) (*JWT, error) {
	kind, rest, _ := strings.Cut(spec, ",")
	switch kind {
	case "simple":
		if rest != "" {
			return nil, fmt.Errorf("simple tokens take no options")
		}
		return nil, nil
	case "jwt":
	default:
		return nil, fmt.Errorf("unknown token type %q (want simple or jwt)", kind)
	}
	opts := map[string]string{}
	for _, kv := range strings.Split(rest, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("JWT option %q is not name=value", kv)
		}
		switch k {
		case "pub-key", "priv-key", "sign-method", "ttl":
			opts[k] = v
		default:
			return nil, fmt.Errorf("unknown JWT option %q (want pub-key, priv-key, sign-method, ttl)", k)
		}
	}
	j := &JWT{ttl: DefaultJWTTTL, method: jwt.GetSigningMethod(opts["sign-method"])}
	if j.method == nil {
		return nil, fmt.Errorf("JWT sign-method %q is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, HS256, HS384, HS512", opts["sign-method"])
	}
	if t := opts["ttl"]; t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("JWT ttl %q is not a positive duration", t)
		}
		j.ttl = d
	}
	read := func(name string) ([]byte, error) {
		if opts[name] == "" {
			return nil, nil
		}
		b, err := os.ReadFile(opts[name])
		if err != nil {
			return nil, fmt.Errorf("JWT %s: %w", name, err)
		}
		return b, nil
	}
	priv, err := read("priv-key")
	if err != nil {
		return nil, err
	}
	pub, err := read("pub-key")
	if err != nil {
		return nil, err
	}
	if err := j.keys(priv, pub); err != nil {
		return nil, err
	}
	return j, nil
}

// keys parses the key files for the signing method.
func (j *JWT) keys(priv, pub []byte) error {
	var err error
	switch j.method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(priv) == 0 {
			return errors.New("JWT with an HMAC sign-method needs priv-key (the shared key)")
		}
		j.sign, j.verify = priv, priv
		return nil
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		var k *rsa.PrivateKey
		if len(priv) > 0 {
			if k, err = jwt.ParseRSAPrivateKeyFromPEM(priv); err != nil {
				return fmt.Errorf("JWT priv-key: %w", err)
			}
			j.sign, j.verify = k, &k.PublicKey
		}
		if len(pub) > 0 {
			if j.verify, err = jwt.ParseRSAPublicKeyFromPEM(pub); err != nil {
				return fmt.Errorf("JWT pub-key: %w", err)
			}
		}
	case *jwt.SigningMethodECDSA:
		var k *ecdsa.PrivateKey
		if len(priv) > 0 {
			if k, err = jwt.ParseECPrivateKeyFromPEM(priv); err != nil {
				return fmt.Errorf("JWT priv-key: %w", err)
			}
			j.sign, j.verify = k, &k.PublicKey
		}
		if len(pub) > 0 {
			if j.verify, err = jwt.ParseECPublicKeyFromPEM(pub); err != nil {
				return fmt.Errorf("JWT pub-key: %w", err)
			}
		}
	case *jwt.SigningMethodEd25519:
		if len(priv) > 0 {
			k, err := jwt.ParseEdPrivateKeyFromPEM(priv)
			if err != nil {
				return fmt.Errorf("JWT priv-key: %w", err)
			}
			j.sign, j.verify = k, k.(ed25519.PrivateKey).Public()
		}
		if len(pub) > 0 {
			if j.verify, err = jwt.ParseEdPublicKeyFromPEM(pub); err != nil {
				return fmt.Errorf("JWT pub-key: %w", err)
			}
		}
	}
	if j.verify == nil {
		return errors.New("JWT needs priv-key or pub-key")
	}
	return nil
}

// Mint returns a token for user at auth revision rev.
func (j *JWT) Mint(user string, rev uint64, now time.Time) (string, error) {
	if j.sign == nil {
		return "", errors.New("auth: this node verifies JWTs and mints none (no priv-key)")
	}
	return jwt.NewWithClaims(j.method, jwt.MapClaims{
		"username": user,
		"revision": rev,
		"exp":      now.Add(j.ttl).Unix(),
	}).SignedString(j.sign)
}

// Check returns the user a token names, etcd's "invalid auth token" for
// one not signed with the key (or expired, or malformed), and "revision
// of auth store is old" for one minted before the auth state's revision.
func (j *JWT) Check(token string, authRevision uint64) (string, error) {
	parsed, err := jwt.Parse(token, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() != j.method.Alg() {
			return nil, errors.New("another signing method")
		}
		return j.verify, nil
	})
	if err != nil || !parsed.Valid {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	claims, ok := parsed.Claims.(jwt.MapClaims)
	if !ok {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	user, ok1 := claims["username"].(string)
	rev, ok2 := claims["revision"].(float64)
	if !ok1 || !ok2 {
		return "", rpctypes.ErrGRPCInvalidAuthToken
	}
	if uint64(rev) < authRevision {
		return "", rpctypes.ErrGRPCAuthOldRevision
	}
	return user, nil
}
