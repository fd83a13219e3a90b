package kubernetes

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// tesseraBinary builds cmd/tessera from the repository root once per test
// run, or returns $TESSERA_BINARY when that names a binary to test instead.
func tesseraBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("TESSERA_BINARY"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tessera-k8s-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tessera")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/tessera")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building tessera: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// removeBinary deletes the directory tesseraBinary built into.
func removeBinary() {
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// lockedBuffer collects a subprocess's stderr while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// node is a one-member Tessera cluster running as a subprocess.
type node struct {
	clientURL string
	tls       *tls.Config // the client side of an https client URL, else nil
	cmd       *exec.Cmd
	stderr    *lockedBuffer
	exited    chan struct{}
}

// startNode starts a fresh tessera with etcd's flags on 127.0.0.1 free ports
// and waits until it serves a linearizable read. The node is killed when the
// test ends; its stderr is logged if the test failed.
func startNode(t testing.TB, extraFlags ...string) *node {
	return startNodeTLS(t, nil, extraFlags...)
}

// startNodeTLS is startNode with an https client URL when clientTLS (the
// client side: CA, certificate) is given; extraFlags then hold the
// server's certificate flags.
func startNodeTLS(t testing.TB, clientTLS *tls.Config, extraFlags ...string) *node {
	t.Helper()
	bin := tesseraBinary(t)
	for attempt := 1; ; attempt++ {
		n, err := tryStartNode(t, bin, clientTLS, extraFlags)
		if err == nil {
			return n
		}
		// A port found free can be taken by another process before the
		// node binds it: try other ports.
		if attempt < 3 && strings.Contains(n.stderr.String(), "address already in use") {
			continue
		}
		t.Fatalf("%v\nstderr:\n%s", err, n.stderr)
	}
}

func tryStartNode(t testing.TB, bin string, clientTLS *tls.Config, extraFlags []string) (*node, error) {
	scheme := "http"
	if clientTLS != nil {
		scheme = "https"
	}
	n := &node{
		clientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort(t)),
		tls:       clientTLS,
		stderr:    &lockedBuffer{},
		exited:    make(chan struct{}),
	}
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	args := append([]string{
		"--name", "default",
		"--data-dir", filepath.Join(t.TempDir(), "default.tessera"),
		"--listen-client-urls", n.clientURL,
		"--advertise-client-urls", n.clientURL,
		"--listen-peer-urls", peerURL,
	}, extraFlags...)
	n.cmd = exec.Command(bin, args...)
	n.cmd.Stderr = n.stderr
	if err := n.cmd.Start(); err != nil {
		return n, err
	}
	go func() {
		_ = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			if s := n.stderr.String(); s != "" {
				t.Logf("tessera stderr:\n%s", s)
			}
		}
	})
	return n, n.waitReady()
}

// waitReady waits until the node answers a linearizable read, without
// writing anything: a fresh node's store is at revision 1, as etcd's. The
// client is made once the port accepts connections: a first connection
// refused would hold gRPC back for its one-second reconnect backoff.
func (n *node) waitReady() error {
	host := n.clientURL[strings.Index(n.clientURL, "://")+3:]
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-n.exited:
			return fmt.Errorf("tessera exited before it was ready: %v", n.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tessera not listening on %s after 30s", host)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.clientURL}, TLS: n.tls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("tessera exited before it was ready: %v", n.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tessera not ready after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}
