// Package clientflags is etcdctl's client flags for Tessera's own
// clients (tessera ctl, tessbench): --cacert, --cert, --key,
// --insecure-skip-tls-verify, --user and --password.
package clientflags

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"strings"
)

// TLS is --cacert, --cert, --key and --insecure-skip-tls-verify.
type TLS struct {
	CAFile, CertFile, KeyFile string
	SkipVerify                bool
}

// Register adds the flags to fs, with etcdctl's names and help.
func (f *TLS) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.CAFile, "cacert", "", "verify certificates of TLS-enabled secure servers using this CA bundle")
	fs.StringVar(&f.CertFile, "cert", "", "identify secure client using this TLS certificate file")
	fs.StringVar(&f.KeyFile, "key", "", "identify secure client using this TLS key file")
	fs.BoolVar(&f.SkipVerify, "insecure-skip-tls-verify", false, "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)")
}

// Config is the TLS configuration the flags ask for: nil for plain text
// (no flag given, and no https:// among endpoints).
func (f TLS) Config(endpoints string) (*tls.Config, error) {
	if f.CAFile == "" && f.CertFile == "" && f.KeyFile == "" && !f.SkipVerify && !strings.Contains(endpoints, "https://") {
		return nil, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: f.SkipVerify, MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		data, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("--cacert %s holds no PEM certificate", f.CAFile)
		}
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, fmt.Errorf("--cert and --key go together")
	}
	if f.CertFile != "" {
		kp, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}

// ParseUser reads etcdctl's --user (name or name:password) and --password.
func ParseUser(user, password string) (name, pw string, err error) {
	if user == "" {
		if password != "" {
			return "", "", fmt.Errorf("--password needs --user")
		}
		return "", "", nil
	}
	name, pw, hasPW := strings.Cut(user, ":")
	switch {
	case hasPW && password != "":
		return "", "", fmt.Errorf("--user has a password and --password is given too: give one")
	case !hasPW && password == "":
		return "", "", fmt.Errorf("--user %q has no password: give --user name:password or --password", user)
	case !hasPW:
		pw = password
	}
	return name, pw, nil
}
