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

// process is a tessera server running as a subprocess.
type process struct {
	t         *testing.T
	binary    string   // "tessera" unless set
	env       []string // added to the test's environment
	args      []string
	clientURL string
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the last start's process has exited
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
	p.cmd = exec.Command(filepath.Join(binaries(p.t), binary), p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(p.cmd, p.exited)
}

// running reports whether the last start's process has not exited.
func (p *process) running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitReady waits until the server accepts a write.
func (p *process) waitReady() {
	p.t.Helper()
	waitListening(p.t, strings.TrimPrefix(p.clientURL, "http://"), func() bool { return !p.running() })
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

// waitListening waits, up to 30s, until a server accepts connections on
// host:port, so that a client made then connects at once: a first
// connection refused would hold gRPC back for its one-second reconnect
// backoff.
func waitListening(t testing.TB, hostPort string, exited func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", hostPort, time.Second); err == nil {
			_ = c.Close()
			return
		}
		if exited() || time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s", hostPort)
		}
		time.Sleep(10 * time.Millisecond)
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

// kill sends SIGKILL and reaps the process.
func (p *process) kill() {
	if p.running() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

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
