package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// etcdVersion is the etcd release whose behaviour Tessera follows.
const etcdVersion = "v3.7.3"

var (
	etcdOnce sync.Once
	etcdPath string
	etcdErr  error
)

// etcdServerBinary returns an etcd server binary of etcdVersion. $TESSERA_ETCD
// names one to use as it is; otherwise it is built once from the Go module
// proxy into a cache outside the repository and kept there for later runs:
// $TESSERA_BENCH_CACHE/etcd-v3.7.3/etcd, by default under the user's cache
// directory (tessera-bench/), the binary bench/compare.sh builds and uses. The
// build is a throwaway module that requires etcd's server module (whose
// go.mod has replace directives, so `go install …@version` refuses it), so
// this module's go.mod never carries etcd's server.
func etcdServerBinary(t *testing.T) string {
	t.Helper()
	etcdOnce.Do(func() { etcdPath, etcdErr = findOrBuildEtcd() })
	if etcdErr != nil {
		t.Fatal(etcdErr)
	}
	return etcdPath
}

func findOrBuildEtcd() (string, error) {
	if bin := os.Getenv("TESSERA_ETCD"); bin != "" {
		return bin, checkEtcdVersion(bin)
	}
	bin, err := findOrBuildEtcdTool("etcd", "go.etcd.io/etcd/server/v3")
	if err != nil {
		return "", err
	}
	return bin, checkEtcdVersion(bin)
}

var (
	etcdutlOnce sync.Once
	etcdutlPath string
	etcdutlErr  error
)

// etcdutlBinary returns etcdutl of etcdVersion, built and cached as
// etcdServerBinary's etcd is.
func etcdutlBinary(t *testing.T) string {
	t.Helper()
	etcdutlOnce.Do(func() { etcdutlPath, etcdutlErr = findOrBuildEtcdTool("etcdutl", "go.etcd.io/etcd/etcdutl/v3") })
	if etcdutlErr != nil {
		t.Fatal(etcdutlErr)
	}
	return etcdutlPath
}

// findOrBuildEtcdTool returns the binary name of etcd's module at
// etcdVersion from the cache, building it there first when missing.
func findOrBuildEtcdTool(name, module string) (string, error) {
	cache := os.Getenv("TESSERA_BENCH_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no cache directory for the %s build (set TESSERA_BENCH_CACHE): %w", name, err)
		}
		cache = filepath.Join(dir, "tessera-bench")
	}
	dir := filepath.Join(cache, "etcd-"+etcdVersion)
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// A module of its own per build, so concurrent test runs do not share a
	// go.mod; the binary appears under its final name only once complete.
	src, err := os.MkdirTemp(dir, "src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	gomod := "module tessera-test/etcd-build\n\ngo 1.26\n"
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", err
	}
	tmp := filepath.Join(src, name)
	for _, args := range [][]string{
		{"get", module + "@" + etcdVersion},
		{"build", "-o", tmp, module},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("building %s %s (go %s): %v\n%s", name, etcdVersion, strings.Join(args, " "), err, out)
		}
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	return bin, nil
}

func checkEtcdVersion(bin string) error {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %v\n%s", bin, err, out)
	}
	if !strings.Contains(string(out), "etcd Version: "+strings.TrimPrefix(etcdVersion, "v")) {
		return fmt.Errorf("%s is not etcd %s (remove it to rebuild):\n%s", bin, etcdVersion, out)
	}
	return nil
}

// etcdProcess is a one-member etcd cluster running as a subprocess on
// 127.0.0.1, with its data in a temporary directory.
type etcdProcess struct {
	*child
	endpoint string // host:port of the client URL
	stderr   *bytes.Buffer
	conn     *grpc.ClientConn
}

// startEtcd starts etcd, with flags added to its own, and waits until it
// answers a read (a read, so the store is left at revision 1, as new). It is
// killed when the test ends. An etcd that exits at once because another
// process took one of its ports meanwhile is started again on others.
func startEtcd(t *testing.T, flags ...string) *etcdProcess {
	t.Helper()
	for attempt := 1; ; attempt++ {
		e := launchEtcd(t, flags)
		if e.listening(e.endpoint, 30*time.Second) {
			e.waitReady(t)
			return e
		}
		if attempt < 3 && strings.Contains(e.stderr.String(), "address already in use") {
			continue
		}
		t.Fatalf("etcd not listening on %s after 30s\nstderr:\n%s", e.endpoint, e.stderr)
	}
}

func launchEtcd(t *testing.T, flags []string) *etcdProcess {
	t.Helper()
	bin := etcdServerBinary(t)
	client := fmt.Sprintf("127.0.0.1:%d", testcluster.FreePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	e := &etcdProcess{endpoint: client, stderr: &bytes.Buffer{}}
	cmd := exec.Command(bin,
		"--name", "differential",
		"--data-dir", t.TempDir(),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "differential="+peer, "--initial-cluster-state", "new",
		"--log-level", "error")
	cmd.Args = append(cmd.Args, flags...)
	cmd.Stderr = e.stderr
	c, err := startChild(cmd)
	if err != nil {
		t.Fatal(err)
	}
	e.child = c
	t.Cleanup(e.kill)
	return e
}

// waitReady connects to etcd and waits, up to 30s, until it answers a read.
func (e *etcdProcess) waitReady(t *testing.T) {
	t.Helper()
	conn, err := grpc.NewClient(e.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.conn = conn
	t.Cleanup(func() { conn.Close() })
	kv := pb.NewKVClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("ready")})
		cancel()
		if err == nil {
			return
		}
		select {
		case <-e.exited:
			t.Fatalf("etcd exited: %v\nstderr:\n%s", err, e.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not ready after 30s: %v\nstderr:\n%s", err, e.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// etcdClient is a clientv3 client of an etcd process.
func etcdClient(t *testing.T, e *etcdProcess) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
