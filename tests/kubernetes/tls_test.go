package kubernetes

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/storage/storagebackend/factory"
)

// TestAPIServerStorageOverTLS: kube-apiserver's own storage factory, set
// up as production clusters set it up (--etcd-servers on https,
// --etcd-cafile, --etcd-certfile, --etcd-keyfile), against a node serving
// https with --client-cert-auth: it creates, reads, updates, lists and
// watches pods. A client certificate of another CA is refused.
func TestAPIServerStorageOverTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, caFile := makeCA(t, dir, "ca")
	serverCert, serverKey := issueCert(t, dir, "server", caCert, caKey)
	apiCert, apiKey := issueCert(t, dir, "kube-apiserver", caCert, caKey)
	otherCA, otherKey, _ := makeCA(t, dir, "other")
	strangerCert, strangerKey := issueCert(t, dir, "stranger", otherCA, otherKey)

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	kp, err := tls.LoadX509KeyPair(apiCert, apiKey)
	if err != nil {
		t.Fatal(err)
	}
	n := startNodeTLS(t, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}},
		"--cert-file", serverCert, "--key-file", serverKey, "--trusted-ca-file", caFile, "--client-cert-auth")

	codec := apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	create := func(certFile, keyFile string) (storage.Interface, factory.DestroyFunc, error) {
		cfg := storagebackend.NewDefaultConfig("/registry", codec)
		cfg.Transport = storagebackend.TransportConfig{ServerList: []string{n.clientURL}, CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile}
		return factory.Create(*cfg.ForResource(schema.GroupResource{Resource: "pods"}), newPod, newPodList, "/pods")
	}
	store, destroy, err := create(apiCert, apiKey)
	if err != nil {
		t.Fatal(err)
	}
	defer destroy()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	key := "/pods/default/web"
	out := &example.Pod{}
	if err := store.Create(ctx, key, &example.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}}, out, 0); err != nil {
		t.Fatalf("create over TLS: %v", err)
	}
	w, err := store.Watch(ctx, "/pods/default", storage.ListOptions{ResourceVersion: out.ResourceVersion, Recursive: true, Predicate: storage.Everything})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	updated := &example.Pod{}
	if err := store.GuaranteedUpdate(ctx, key, updated, false, nil, func(input runtime.Object, _ storage.ResponseMeta) (runtime.Object, *uint64, error) {
		p := input.(*example.Pod)
		p.Labels = map[string]string{"tier": "web"}
		return p, nil, nil
	}, nil); err != nil {
		t.Fatalf("update over TLS: %v", err)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Object.(*example.Pod).Labels["tier"] != "web" {
			t.Fatalf("watch over TLS: %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no watch event over TLS")
	}
	list := &example.PodList{}
	if err := store.GetList(ctx, "/pods/default", storage.ListOptions{Recursive: true, Predicate: storage.Everything}, list); err != nil || len(list.Items) != 1 {
		t.Fatalf("list over TLS: %v %v", list, err)
	}

	stranger, destroyStranger, err := create(strangerCert, strangerKey)
	if err == nil {
		defer destroyStranger()
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		defer scancel()
		if err := stranger.Get(sctx, key, storage.GetOptions{}, &example.Pod{}); err == nil {
			t.Fatal("a client certificate of another CA was served")
		}
	}
}

// makeCA writes a CA certificate (PEM) for a test.
func makeCA(t *testing.T, dir, name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(dir, name+"-ca.pem")
	writeTestPEM(t, file, "CERTIFICATE", der)
	return cert, key, file
}

// issueCert writes a certificate for cn (server and client, 127.0.0.1)
// signed by the CA, and its key.
func issueCert(t *testing.T, dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	writeTestPEM(t, certFile, "CERTIFICATE", der)
	writeTestPEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writeTestPEM(t *testing.T, file, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
