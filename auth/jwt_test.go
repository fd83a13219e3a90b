package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// writeECKeys writes an ES256 key pair as PEM files.
func writeECKeys(t *testing.T) (priv, pub string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, pub = filepath.Join(dir, "jwt.key"), filepath.Join(dir, "jwt.pub")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// TestJWT: --auth-token jwt tokens name their user until they expire or
// the auth state's revision passes theirs; a node with only the public
// key verifies and mints nothing; a token of another key, or forged, is
// refused; bad options are refused naming the option.
func TestJWT(t *testing.T) {
	priv, pub := writeECKeys(t)
	signer, err := ParseAuthToken("jwt,pub-key=" + pub + ",priv-key=" + priv + ",sign-method=ES256,ttl=1m")
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := ParseAuthToken("jwt,pub-key=" + pub + ",sign-method=ES256")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := signer.Mint("alice", 5, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []*JWT{signer, verifier} {
		if u, err := j.Check(tok, 5); err != nil || u != "alice" {
			t.Fatalf("Check: %q %v", u, err)
		}
	}
	if _, err := signer.Check(tok, 6); !errors.Is(err, rpctypes.ErrGRPCAuthOldRevision) {
		t.Fatalf("a token older than the auth state: %v", err)
	}
	if _, err := verifier.Mint("alice", 5, time.Now()); err == nil {
		t.Fatal("a node with only the public key minted a token")
	}
	old, _ := signer.Mint("alice", 5, time.Now().Add(-2*time.Minute))
	if _, err := signer.Check(old, 5); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("an expired token: %v", err)
	}
	otherPriv, _ := writeECKeys(t)
	other, err := ParseAuthToken("jwt,priv-key=" + otherPriv + ",sign-method=ES256")
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Mint("root", 5, time.Now())
	if _, err := signer.Check(foreign, 5); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("a token of another key: %v", err)
	}
	parts := strings.Split(tok, ".")
	if _, err := signer.Check(parts[0]+"."+parts[1]+"x."+parts[2], 5); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("a forged token: %v", err)
	}
	hs, err := ParseAuthToken("jwt,priv-key=" + priv + ",sign-method=HS256")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs.Check(tok, 5); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("an ES256 token to an HS256 node: %v", err)
	}
	if j, err := ParseAuthToken("simple"); j != nil || err != nil {
		t.Fatalf("simple: %v %v", j, err)
	}
	for spec, want := range map[string]string{
		"opaque":                                        "unknown token type",
		"simple,x=1":                                    "no options",
		"jwt,sign-method=XX256,priv-key=" + priv:        "sign-method",
		"jwt,sign-method=ES256":                         "needs priv-key or pub-key",
		"jwt,sign-method=HS256":                         "needs priv-key",
		"jwt,sign-method=ES256,priv-key=/no/such":       "priv-key",
		"jwt,sign-method=ES256,ttl=soon,pub-key=" + pub: "ttl",
		"jwt,color=blue":                                "unknown JWT option",
	} {
		if _, err := ParseAuthToken(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAuthToken(%q) = %v, want an error about %s", spec, err, want)
		}
	}
}
