// Package tlsutil builds the TLS configurations of a node's listeners and
// of its connections to other nodes from etcd's flags: certificate and key
// files (read again from disk when they change, so certificates rotate
// without a restart), a trusted CA file, client certificate checks, a CRL,
// cipher suites and protocol versions, and self-signed certificates for
// --auto-tls.
package tlsutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Info is one side's TLS files and checks, as etcd's flags give them
// (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth,
// --client-crl-file, or their --peer- forms).
type Info struct {
	CertFile       string
	KeyFile        string
	TrustedCAFile  string
	ClientCertAuth bool
	CRLFile        string
	// AllowedCN, when set, is the only common name a client certificate
	// may have (--peer-cert-allowed-cn).
	AllowedCN string
	// AutoTLS: without CertFile and KeyFile, a self-signed certificate is
	// made in AutoDir (--auto-tls, --peer-auto-tls).
	AutoTLS bool
	AutoDir string

	CipherSuites []uint16
	MinVersion   uint16
	MaxVersion   uint16
}

// Empty reports whether no certificate is configured.
func (i Info) Empty() bool { return i.CertFile == "" && i.KeyFile == "" && !i.AutoTLS }

// ParseCipherSuites maps etcd's --cipher-suites names (Go's) to IDs.
func ParseCipherSuites(names []string) ([]uint16, error) {
	known := map[string]uint16{}
	for _, cs := range tls.CipherSuites() {
		known[cs.Name] = cs.ID
	}
	for _, cs := range tls.InsecureCipherSuites() {
		known[cs.Name] = cs.ID
	}
	var ids []uint16
	for _, n := range names {
		id, ok := known[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("unexpected TLS cipher suite %q", n)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// ParseVersion maps etcd's --tls-min-version and --tls-max-version values
// ("TLS1.2", "TLS1.3"; "" for none) to Go's.
func ParseVersion(v string) (uint16, error) {
	switch v {
	case "":
		return 0, nil
	case "TLS1.2":
		return tls.VersionTLS12, nil
	case "TLS1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unexpected TLS version %q (want TLS1.2 or TLS1.3)", v)
}

// ServerConfig returns the configuration of a listener: its certificate
// (reloaded when its files change), and with ClientCertAuth the clients'
// certificates verified against the trusted CA (reloaded likewise), the
// CRL and the allowed CN. nextProtos are offered in ALPN.
func (i Info) ServerConfig(nextProtos ...string) (*tls.Config, error) {
	if err := i.makeAutoCert(); err != nil {
		return nil, err
	}
	kp := &keyPair{cert: i.CertFile, key: i.KeyFile}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	ca := &caPool{file: i.TrustedCAFile}
	if i.TrustedCAFile != "" {
		if _, err := ca.get(); err != nil {
			return nil, err
		}
	}
	crl := &crlList{file: i.CRLFile}
	if i.CRLFile != "" {
		if _, err := crl.get(); err != nil {
			return nil, err
		}
	}
	base := &tls.Config{
		MinVersion:   max(i.MinVersion, tls.VersionTLS12),
		MaxVersion:   i.MaxVersion,
		CipherSuites: i.CipherSuites,
		NextProtos:   nextProtos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	if i.ClientCertAuth {
		base.ClientAuth = tls.RequireAndVerifyClientCert
	}
	base.VerifyPeerCertificate = i.verifyChains(crl)
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		if i.TrustedCAFile != "" {
			pool, err := ca.get()
			if err != nil {
				return nil, err
			}
			cfg.ClientCAs = pool
		}
		return cfg, nil
	}
	return base, nil
}

// ClientConfig returns the configuration of connections this node opens
// with these files (to other nodes): its certificate as the client's, the
// trusted CA (or the system's) for the server's.
func (i Info) ClientConfig() (*tls.Config, error) {
	if err := i.makeAutoCert(); err != nil {
		return nil, err
	}
	kp := &keyPair{cert: i.CertFile, key: i.KeyFile}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:   max(i.MinVersion, tls.VersionTLS12),
		MaxVersion:   i.MaxVersion,
		CipherSuites: i.CipherSuites,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	switch {
	case i.TrustedCAFile != "":
		pool, err := (&caPool{file: i.TrustedCAFile}).get()
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	case i.AutoTLS:
		// Self-signed certificates prove nothing to one another: as etcd
		// with --peer-auto-tls, the connection is encrypted, not verified.
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

// verifyChains checks the verified chains' leaf certificates against the
// CRL and the allowed CN.
func (i Info) verifyChains(crl *crlList) func([][]byte, [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if i.CRLFile != "" {
			revoked, err := crl.get()
			if err != nil {
				return err
			}
			for _, chain := range chains {
				for _, c := range chain {
					if revoked[string(c.SerialNumber.Bytes())] {
						return fmt.Errorf("tls: certificate with serial %x is revoked", c.SerialNumber)
					}
				}
			}
		}
		if i.AllowedCN != "" {
			for _, chain := range chains {
				if len(chain) > 0 && chain[0].Subject.CommonName == i.AllowedCN {
					return nil
				}
			}
			return fmt.Errorf("tls: client certificate's CN is not %q", i.AllowedCN)
		}
		return nil
	}
}

// watched is a file read again when its size or modification time change.
type watched struct {
	mu      sync.Mutex
	stamp   string
	checked time.Time
}

// changed reports whether the files changed since the last call that
// returned true (at most one look per statEvery).
func (w *watched) changed(files ...string) (bool, error) {
	const statEvery = time.Second
	if time.Since(w.checked) < statEvery && w.stamp != "" {
		return false, nil
	}
	w.checked = time.Now()
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return false, err
		}
		fmt.Fprintf(&b, "%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
	}
	if b.String() == w.stamp {
		return false, nil
	}
	w.stamp = b.String()
	return true, nil
}

type keyPair struct {
	cert, key string
	w         watched
	kp        *tls.Certificate
}

func (k *keyPair) get() (*tls.Certificate, error) {
	k.w.mu.Lock()
	defer k.w.mu.Unlock()
	changed, err := k.w.changed(k.cert, k.key)
	if err != nil {
		if k.kp != nil {
			return k.kp, nil // a rotation in progress: keep the last good pair
		}
		return nil, err
	}
	if changed || k.kp == nil {
		kp, err := tls.LoadX509KeyPair(k.cert, k.key)
		if err != nil {
			if k.kp != nil {
				k.w.stamp = "" // try again at the next look
				return k.kp, nil
			}
			return nil, fmt.Errorf("loading %s and %s: %w", k.cert, k.key, err)
		}
		k.kp = &kp
	}
	return k.kp, nil
}

type caPool struct {
	file string
	w    watched
	pool *x509.CertPool
}

func (c *caPool) get() (*x509.CertPool, error) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	changed, err := c.w.changed(c.file)
	if err != nil && c.pool != nil {
		return c.pool, nil
	}
	if err != nil {
		return nil, err
	}
	if changed || c.pool == nil {
		data, err := os.ReadFile(c.file)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			if c.pool != nil {
				c.w.stamp = ""
				return c.pool, nil
			}
			return nil, fmt.Errorf("%s holds no PEM certificate", c.file)
		}
		c.pool = pool
	}
	return c.pool, nil
}

type crlList struct {
	file    string
	w       watched
	revoked map[string]bool
}

func (c *crlList) get() (map[string]bool, error) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	changed, err := c.w.changed(c.file)
	if err != nil && c.revoked != nil {
		return c.revoked, nil
	}
	if err != nil {
		return nil, err
	}
	if changed || c.revoked == nil {
		data, err := os.ReadFile(c.file)
		if err != nil {
			return nil, err
		}
		if block, _ := pem.Decode(data); block != nil {
			data = block.Bytes
		}
		list, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, fmt.Errorf("reading the CRL %s: %w", c.file, err)
		}
		revoked := map[string]bool{}
		for _, e := range list.RevokedCertificateEntries {
			revoked[string(e.SerialNumber.Bytes())] = true
		}
		c.revoked = revoked
	}
	return c.revoked, nil
}

// makeAutoCert makes (once) a self-signed certificate in AutoDir when
// AutoTLS is set and no certificate is given, and points the Info at it.
func (i *Info) makeAutoCert() error {
	if !i.AutoTLS || i.CertFile != "" || i.KeyFile != "" {
		return nil
	}
	cert, key := filepath.Join(i.AutoDir, "cert.pem"), filepath.Join(i.AutoDir, "key.pem")
	i.CertFile, i.KeyFile = cert, key
	if _, err := tls.LoadX509KeyPair(cert, key); err == nil {
		return nil
	}
	return SelfSigned(cert, key, "tessera", nil, 365*24*time.Hour)
}

// SelfSigned writes a self-signed ECDSA certificate for hosts (names or
// IPs; 127.0.0.1 and localhost always) and its key.
func SelfSigned(certFile, keyFile, cn string, hosts []string, validity time.Duration) error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"tessera"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(keyFile, "EC PRIVATE KEY", keyDER, 0o600)
}

func writePEM(file, kind string, der []byte, mode os.FileMode) error {
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: kind, Bytes: der}); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), mode); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
