package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/server"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	file string // the CA certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.file = filepath.Join(ca.dir, name+"-ca.pem")
	writePEMFile(t, ca.file, "CERTIFICATE", der)
	return ca
}

var serials = big.NewInt(100)

// issue writes a certificate for cn (good for 127.0.0.1, as server and as
// client) and its key, and returns their paths.
func (ca *testCA) issue(t *testing.T, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serials.Add(serials, big.NewInt(1))
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).Set(serials), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, cn+".pem"), filepath.Join(ca.dir, cn+"-key.pem")
	writePEMFile(t, certFile, "CERTIFICATE", der)
	writePEMFile(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEMFile(t *testing.T, file, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientTLS is a client's TLS configuration: the CA it trusts and, when
// certFile is given, its certificate.
func clientTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(data)
	cfg := &tls.Config{RootCAs: pool}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg
}

// TestClientTLS: a node serving https with --client-cert-auth answers
// clients holding a certificate of its CA, over gRPC (clientv3 and
// etcdctl), the JSON gateway and Election and Lock; refuses plain-text
// clients, clients without a certificate and clients of another CA; takes
// a verified certificate's CN as the user once auth is on; and serves a
// certificate rotated on disk to new connections without a restart.
func TestClientTLS(t *testing.T) {
	ca, other := newTestCA(t, "ca"), newTestCA(t, "other")
	serverCert, serverKey := ca.issue(t, "server")
	rootCert, rootKey := ca.issue(t, "root")
	aliceCert, aliceKey := ca.issue(t, "alice")
	strangerCert, strangerKey := other.issue(t, "alice")
	c := testcluster.Start(t, 1, func(cfg *server.Config) {
		for i, u := range cfg.ListenClientURLs {
			cfg.ListenClientURLs[i] = "https://" + strings.TrimPrefix(u, "http://")
		}
		cfg.AdvertiseClientURLs = cfg.ListenClientURLs
		cfg.ClientTLS.CertFile, cfg.ClientTLS.KeyFile = serverCert, serverKey
		cfg.ClientTLS.TrustedCAFile = ca.file
		cfg.ClientTLS.ClientCertAuth = true
	})
	ctx := ctxT(t)
	url := c.Nodes[0].ClientURL
	endpoint := strings.TrimPrefix(url, "https://")
	client := func(tlsCfg *tls.Config) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	root := client(clientTLS(t, ca.file, rootCert, rootKey))
	if _, err := root.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	for name, cfg := range map[string]*tls.Config{
		"without a certificate":   clientTLS(t, ca.file, "", ""),
		"with another CA's":       clientTLS(t, ca.file, strangerCert, strangerKey),
		"not trusting the server": clientTLS(t, other.file, aliceCert, aliceKey),
	} {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := client(cfg).Get(cctx, "k")
		cancel()
		if err == nil {
			t.Errorf("a client %s was served", name)
		}
	}
	plain, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := plain.Get(cctx, "k"); err == nil {
		t.Error("a plain-text client was served")
	}
	cancel()

	// etcdctl with etcd's flags.
	if out, err := etcdctl(t, endpoint, "", "--cacert", ca.file, "--cert", aliceCert, "--key", aliceKey, "get", "k", "--print-value-only"); err != nil || out != "v\n" {
		t.Fatalf("etcdctl over TLS: %q %v", out, err)
	}

	// The gateway and /health over HTTPS (HTTP/1.1).
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.file, aliceCert, aliceKey)}}
	resp, err := hc.Post(url+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"`+base64.StdEncoding.EncodeToString([]byte("k"))+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), base64.StdEncoding.EncodeToString([]byte("v"))) {
		t.Fatalf("gateway range over TLS: %d %s", resp.StatusCode, body)
	}

	// Lock runs in the node over its own in-memory connection.
	s, err := concurrency.NewSession(root)
	if err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(s, "locks/a")
	if err := m.Lock(ctx); err != nil {
		t.Fatalf("lock over TLS: %v", err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// With auth on, the certificate's CN is the user.
	must := mustOK(t)
	must(root.UserAdd(ctx, "root", "rootpw"))
	must(root.UserGrantRole(ctx, "root", "root"))
	must(root.UserAdd(ctx, "alice", "alicepw"))
	must(root.RoleAdd(ctx, "apps"))
	must(root.RoleGrantPermission(ctx, "apps", "app/", clientv3.GetPrefixRangeEnd("app/"), clientv3.PermissionType(clientv3.PermReadWrite)))
	must(root.UserGrantRole(ctx, "alice", "apps"))
	must(root.AuthEnable(ctx))
	alice := client(clientTLS(t, ca.file, aliceCert, aliceKey))
	if _, err := alice.Put(ctx, "app/x", "1"); err != nil {
		t.Fatalf("alice (by her certificate) writing her prefix: %v", err)
	}
	if _, err := alice.Put(ctx, "k", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice (by her certificate) writing outside her prefix: %v", err)
	}
	if _, err := root.Put(ctx, "k", "w"); err != nil {
		t.Fatalf("root (by its certificate): %v", err)
	}
	// tessera ctl with etcdctl's TLS flags; root by its certificate.
	if out, err := runBinary(t, "tessera", "ctl", "--endpoints", url, "--cacert", ca.file, "--cert", rootCert, "--key", rootKey, "nodes"); err != nil || !strings.Contains(out, "live") {
		t.Fatalf("tessera ctl nodes over TLS as root: %q %v", out, err)
	}
	if out, err := runBinary(t, "tessera", "ctl", "--endpoints", url, "--cacert", ca.file, "--cert", aliceCert, "--key", aliceKey, "nodes"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("tessera ctl nodes over TLS as alice: %q %v", out, err)
	}

	// A certificate replaced on disk is served to new connections.
	servedSerial := func() *big.Int {
		t.Helper()
		conn, err := tls.Dial("tcp", endpoint, clientTLS(t, ca.file, aliceCert, aliceKey))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	before := servedSerial()
	newCert, newKey := ca.issue(t, "server-rotated")
	for _, f := range [][2]string{{newCert, serverCert}, {newKey, serverKey}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1]+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f[1]+".new", f[1]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for servedSerial().Cmp(before) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not served within 10s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := alice.Get(ctx, "app/x"); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
}

// TestPeerTLS: three nodes whose peer URLs are https with
// --peer-client-cert-auth and --peer-cert-allowed-cn serve writes and
// linearizable reads through any node (Raft, forwarding and the oracle all
// over peer TLS); a node with a certificate of another CA, one with a
// certificate of the right CA but another CN, and one without peer TLS
// cannot join; one with a good certificate joins and serves; and a plain
// connection to a peer port gets nothing.
func TestPeerTLS(t *testing.T) {
	ca, other := newTestCA(t, "peer-ca"), newTestCA(t, "stranger-ca")
	// Every member's certificate has the CN allowed.
	certs := map[string][2]string{}
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		c, k := ca.issueCN(t, "member-"+n, "member")
		certs[n] = [2]string{c, k}
	}
	secure := func(u string) string {
		if rest, ok := strings.CutPrefix(u, "http://"); ok {
			return "https://" + rest
		}
		return u
	}
	withPeerTLS := func(files func(name string) [2]string, trusted string) testcluster.Options {
		return func(cfg *server.Config) {
			members := slices.Clone(cfg.InitialCluster) // shared with the other nodes' configs
			for i := range members {
				members[i].PeerURL = secure(members[i].PeerURL)
			}
			cfg.InitialCluster = members
			cfg.ListenPeerURLs = []string{secure(cfg.ListenPeerURLs[0])}
			cfg.InitialAdvertisePeerURLs = []string{secure(cfg.InitialAdvertisePeerURLs[0])}
			f := files(cfg.Name)
			cfg.PeerTLS.CertFile, cfg.PeerTLS.KeyFile = f[0], f[1]
			cfg.PeerTLS.TrustedCAFile = trusted
			cfg.PeerTLS.ClientCertAuth = true
			cfg.PeerTLS.AllowedCN = "member"
		}
	}
	var joinerFiles [2]string
	files := func(name string) [2]string {
		if f, ok := certs[name]; ok && name != "n4" {
			return f
		}
		return joinerFiles
	}
	c := testcluster.Start(t, 3, withPeerTLS(files, ca.file))
	ctx := ctxT(t)
	if _, err := c.Client(c.Nodes[0].ClientURL).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if get, err := c.Client(c.Nodes[2].ClientURL).Get(ctx, "k"); err != nil || len(get.Kvs) != 1 {
		t.Fatalf("a linearizable read through n3: %v %v", get, err)
	}

	joinFails := func(what string, opts ...testcluster.Options) {
		t.Helper()
		cfg := server.DefaultConfig()
		cfg.Name = "n4"
		cfg.DataDir = t.TempDir()
		clientURL := "http://127.0.0.1:" + strings.Split(freeAddr(t), ":")[1]
		cfg.ListenClientURLs, cfg.AdvertiseClientURLs = []string{clientURL}, []string{clientURL}
		peer := "http://127.0.0.1:" + strings.Split(freeAddr(t), ":")[1]
		cfg.ListenPeerURLs, cfg.InitialAdvertisePeerURLs = []string{peer}, []string{peer}
		cfg.InitialCluster = []server.Member{{Name: "n4", PeerURL: peer}}
		cfg.Join = c.Endpoints()
		for _, o := range opts {
			o(&cfg)
		}
		if srv, err := server.Start(cfg); err == nil {
			srv.Close()
			t.Fatalf("a node %s joined", what)
		} else if !strings.Contains(err.Error(), "refused this node") {
			t.Fatalf("a node %s: %v, want a refusal", what, err)
		}
	}
	strangerCert, strangerKey := other.issueCN(t, "stranger", "member")
	joinerFiles = [2]string{strangerCert, strangerKey}
	joinFails("with another CA's certificate", withPeerTLS(files, ca.file))
	wrongCN, wrongCNKey := ca.issueCN(t, "wrong-cn", "intruder")
	joinerFiles = [2]string{wrongCN, wrongCNKey}
	joinFails("with a certificate of another CN", withPeerTLS(files, ca.file))
	joinFails("without peer TLS")

	joinerFiles = certs["n4"]
	n4 := c.AddNodeAt(secure("http://127.0.0.1:" + strings.Split(freeAddr(t), ":")[1]))
	if get, err := c.Client(n4.ClientURL).Get(ctx, "k"); err != nil || len(get.Kvs) != 1 {
		t.Fatalf("a read through the node that joined: %v %v", get, err)
	}

	// The nodes' services on a peer port answer neither plain text nor a
	// TLS client without a certificate.
	peerAddr := strings.TrimPrefix(c.Nodes[0].Config.ListenPeerURLs[0], "https://")
	for what, creds := range map[string]credentials.TransportCredentials{
		"plain text":            insecure.NewCredentials(),
		"without a certificate": credentials.NewTLS(clientTLS(t, ca.file, "", "")),
	} {
		cc, err := grpc.NewClient(peerAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = tesserapb.NewInternalClient(cc).ListNodes(cctx, &tesserapb.ListNodesRequest{})
		cancel()
		cc.Close()
		if err == nil {
			t.Errorf("a peer port answered a client with %s", what)
		}
	}
}

// issueCN is issue with the file named apart from the certificate's CN.
func (ca *testCA) issueCN(t *testing.T, file, cn string) (certFile, keyFile string) {
	t.Helper()
	c, k := ca.issue(t, cn)
	certFile, keyFile = filepath.Join(ca.dir, file+".pem"), filepath.Join(ca.dir, file+"-key.pem")
	for _, f := range [][2]string{{c, certFile}, {k, keyFile}} {
		if err := os.Rename(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// freeAddr is 127.0.0.1:PORT of a port free a moment ago.
func freeAddr(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(testcluster.FreePort(t))
}
