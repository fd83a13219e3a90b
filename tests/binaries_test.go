package tests

import (
	"bytes"
	"context"
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

	"github.com/tesserakv/tessera/internal/testcluster"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// binaries builds tessera, tessera-crashpoints (tessera with the crash
// points of cmd/tessera/crashpoints.go) and etcdctl (v3.7.3, from the
// module's tool line) once per test run and returns the directory holding them.
func binaries(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "tessera-bin-")
		if binErr != nil {
			return
		}
		for _, b := range []struct{ name, pkg, tags string }{
			{"tessera", "github.com/tesserakv/tessera/cmd/tessera", ""},
			{"tessera-crashpoints", "github.com/tesserakv/tessera/cmd/tessera", "crashpoints"},
			{"etcdctl", "go.etcd.io/etcd/etcdctl/v3", ""},
		} {
			out, err := exec.Command("go", "build", "-tags", b.tags, "-o", filepath.Join(binDir, b.name), b.pkg).CombinedOutput()
			if err != nil {
				binErr = fmt.Errorf("building %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// child is a started subprocess whose exit is watched.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it has exited
}

// startChild starts cmd and watches for its exit.
func startChild(cmd *exec.Cmd) (*child, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// running reports whether the child was started and has not exited.
func (c *child) running() bool {
	if c == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL, if the child runs, and waits for its exit.
func (c *child) kill() {
	if c.running() {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.exited
	}
}

// listening reports whether a server accepts connections on host:port
// within limit, false as soon as the child has exited. Waiting for it lets
// a client made then connect at once: a first connection refused would
// hold gRPC back for its one-second reconnect backoff.
func (c *child) listening(hostPort string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if conn, err := net.DialTimeout("tcp", hostPort, time.Second); err == nil {
			_ = conn.Close()
			return true
		}
		select {
		case <-c.exited:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return false
}

// process is a tessera server running as a subprocess.
type process struct {
	*child    // the last start's process; nil before the first
	t         *testing.T
	binary    string   // "tessera" unless set
	env       []string // added to the test's environment
	args      []string
	clientURL string
	stderr    *bytes.Buffer
}

func startProcess(t *testing.T, dataDir string, flags ...string) *process {
	t.Helper()
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	p := &process{t: t, clientURL: clientURL, args: append([]string{
		"--data-dir", dataDir,
		"--listen-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
	}, flags...)}
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *process) start() {
	p.t.Helper()
	p.launch()
	p.waitReady()
}

// launch starts the process without waiting for it to serve.
func (p *process) launch() {
	p.t.Helper()
	p.stderr = &bytes.Buffer{}
	binary := p.binary
	if binary == "" {
		binary = "tessera"
	}
	cmd := exec.Command(filepath.Join(binaries(p.t), binary), p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stderr = p.stderr
	c, err := startChild(cmd)
	if err != nil {
		p.t.Fatal(err)
	}
	p.child = c
}

// waitReady waits until the server accepts a write.
func (p *process) waitReady() {
	p.t.Helper()
	if hostPort := strings.TrimPrefix(p.clientURL, "http://"); !p.listening(hostPort, 30*time.Second) {
		p.t.Fatalf("nothing listening on %s", hostPort)
	}
	cli := p.client()
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(ctx, "__ready", "1")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("tessera not ready after 30s: %v\nstderr:\n%s", err, p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *process) client() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.clientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		p.t.Fatal(err)
	}
	return cli
}

// logTail writes the end of the process's log (of its last start) to the
// test log; call it only after the process has exited.
func (p *process) logTail() {
	p.t.Helper()
	if p.stderr == nil {
		return
	}
	out := p.stderr.Bytes()
	const most = 64 << 10
	if len(out) > most {
		out = out[len(out)-most:]
	}
	p.t.Logf("log of tessera %s (its end):\n%s", strings.Join(p.args, " "), out)
}

// kill kills the last start's process, if it runs. (Declared on process,
// not only promoted from child, so that t.Cleanup(p.kill) kills whichever
// process runs when the test ends.)
func (p *process) kill() { p.child.kill() }

// stop sends SIGTERM and waits for a graceful exit.
func (p *process) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	<-p.exited
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("tessera exited: %v", p.cmd.ProcessState)
	}
	return nil
}

// etcdctl runs etcdctl against the given endpoint and returns its stdout.
func etcdctl(t *testing.T, endpoint, stdin string, args ...string) (string, error) {
	t.Helper()
	return runBinaryStdin(t, "etcdctl", stdin, append([]string{"--endpoints", endpoint}, args...)...)
}

// runBinary runs one of the built binaries and returns its stdout; the error
// carries its stderr.
func runBinary(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return runBinaryStdin(t, name, "", args...)
}

func runBinaryStdin(t *testing.T, name, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), name), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}
