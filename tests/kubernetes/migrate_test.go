package kubernetes

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/storage"
)

// etcdVersion is the etcd the migration test moves data in from.
const etcdVersion = "v3.7.3"

var (
	etcdOnce sync.Once
	etcdPath string
	etcdErr  error
)

// etcdBinary returns an etcd server of etcdVersion: $TESSERA_ETCD, or the
// one the repository's tests build from the Go module proxy and cache
// ($TESSERA_BENCH_CACHE/etcd-v3.7.3/etcd, by default under the user's
// cache directory), built here the same way when missing.
func etcdBinary(t testing.TB) string {
	t.Helper()
	etcdOnce.Do(func() {
		if bin := os.Getenv("TESSERA_ETCD"); bin != "" {
			etcdPath = bin
			return
		}
		cache := os.Getenv("TESSERA_BENCH_CACHE")
		if cache == "" {
			dir, err := os.UserCacheDir()
			if err != nil {
				etcdErr = err
				return
			}
			cache = filepath.Join(dir, "tessera-bench")
		}
		dir := filepath.Join(cache, "etcd-"+etcdVersion)
		etcdPath = filepath.Join(dir, "etcd")
		if _, err := os.Stat(etcdPath); err == nil {
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			etcdErr = err
			return
		}
		src, err := os.MkdirTemp(dir, "src-")
		if err != nil {
			etcdErr = err
			return
		}
		defer os.RemoveAll(src)
		if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module tessera-test/etcd-build\n\ngo 1.26\n"), 0o644); err != nil {
			etcdErr = err
			return
		}
		for _, args := range [][]string{{"get", "go.etcd.io/etcd/server/v3@" + etcdVersion}, {"build", "-o", "etcd", "go.etcd.io/etcd/server/v3"}} {
			cmd := exec.Command("go", args...)
			cmd.Dir = src
			cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off")
			if out, err := cmd.CombinedOutput(); err != nil {
				etcdErr = fmt.Errorf("building etcd (go %s): %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
		etcdErr = os.Rename(filepath.Join(src, "etcd"), etcdPath)
	})
	if etcdErr != nil {
		t.Fatal(etcdErr)
	}
	return etcdPath
}

// startEtcd starts a one-member etcd on free ports of 127.0.0.1, killed when
// the test ends, and returns its client URL once it serves a read.
func startEtcd(t *testing.T) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cmd := exec.Command(etcdBinary(t), "--name", "etcd", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "etcd="+peer,
		"--log-level", "error")
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not ready after 30s: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestResourceVersionsSurviveImportFromEtcd stores pods through
// kube-apiserver's etcd3 store in a real etcd (creates, updates, a delete),
// moves the data into Tessera with `etcdctl snapshot save`'s file and
// `tessera ctl import-etcd-snapshot`, and points a new etcd3 store at
// Tessera: every pod has the resourceVersion etcd gave it, a list has
// etcd's, a watch from an old resourceVersion replays what etcd's replays,
// an update with the old resourceVersion as precondition succeeds, and new
// writes get later resourceVersions.
func TestResourceVersionsSurviveImportFromEtcd(t *testing.T) {
	var o setupOptions
	withDefaults(&o)
	ctx := context.Background()
	etcdURL := startEtcd(t)
	src := storeOn(t, etcdURL, o)

	key := func(name string) string { return "/pods/ns/" + name }
	out := &example.Pod{}
	for i := range 8 {
		name := fmt.Sprintf("pod-%d", i)
		if err := src.Create(ctx, key(name), &example.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}}, out, 0); err != nil {
			t.Fatal(err)
		}
	}
	firstRV := ""
	for i, name := range []string{"pod-1", "pod-3", "pod-1"} {
		err := src.GuaranteedUpdate(ctx, key(name), out, false, nil, storage.SimpleUpdate(func(obj runtime.Object) (runtime.Object, error) {
			pod := obj.(*example.Pod)
			pod.Spec.NodeName = fmt.Sprintf("node-%d", i)
			return pod, nil
		}), nil)
		if err != nil {
			t.Fatal(err)
		}
		if firstRV == "" {
			firstRV = out.ResourceVersion
		}
	}
	if err := src.Delete(ctx, key("pod-5"), out, nil, storage.ValidateAllObjectFunc, nil, storage.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want := describePods(t, src)
	wantWatch := watchFrom(t, src, firstRV, 3)

	snap := filepath.Join(t.TempDir(), "etcd.db")
	saveEtcdSnapshot(t, etcdURL, snap)
	dataDir := filepath.Join(t.TempDir(), "tessera.data")
	if out, err := exec.Command(tesseraBinary(t), "ctl", "import-etcd-snapshot", snap, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("tessera ctl import-etcd-snapshot: %v\n%s", err, out)
	}
	n := startNode(t, "--data-dir", dataDir)
	dst := storeOn(t, n.clientURL, o)
	if got := describePods(t, dst); got != want {
		t.Fatalf("pods on Tessera after the import:\n%s\non etcd:\n%s", got, want)
	}
	if got := watchFrom(t, dst, firstRV, 3); got != wantWatch {
		t.Fatalf("watch from resourceVersion %s on Tessera:\n%s\non etcd:\n%s", firstRV, got, wantWatch)
	}
	get := &example.Pod{}
	if err := dst.Get(ctx, key("pod-3"), storage.GetOptions{}, get); err != nil {
		t.Fatal(err)
	}
	oldRV := get.ResourceVersion
	err := dst.GuaranteedUpdate(ctx, key("pod-3"), out, false, &storage.Preconditions{ResourceVersion: &oldRV}, storage.SimpleUpdate(func(obj runtime.Object) (runtime.Object, error) {
		pod := obj.(*example.Pod)
		pod.Spec.NodeName = "after-import"
		return pod, nil
	}), nil)
	if err != nil {
		t.Fatalf("update with the imported resourceVersion %s as precondition: %v", oldRV, err)
	}
	if !newerRV(t, out.ResourceVersion, oldRV) {
		t.Fatalf("resourceVersion %s after an update of %s", out.ResourceVersion, oldRV)
	}
}

// describePods lists the store's pods with their resourceVersions, and the
// list's resourceVersion.
func describePods(t *testing.T, s *testStore) string {
	t.Helper()
	list := &example.PodList{}
	if err := s.GetList(context.Background(), "/pods/", storage.ListOptions{Recursive: true, Predicate: storage.Everything}, list); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "list at %s\n", list.ResourceVersion)
	for _, p := range list.Items {
		fmt.Fprintf(&b, "%s/%s rv=%s node=%q\n", p.Namespace, p.Name, p.ResourceVersion, p.Spec.NodeName)
	}
	return b.String()
}

// watchFrom describes the first n events of a watch of every pod from rv.
func watchFrom(t *testing.T, s *testStore, rv string, n int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := s.Watch(ctx, "/pods/", storage.ListOptions{ResourceVersion: rv, Recursive: true, Predicate: storage.Everything})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var b strings.Builder
	for range n {
		select {
		case ev := <-w.ResultChan():
			pod, ok := ev.Object.(*example.Pod)
			if !ok {
				fmt.Fprintf(&b, "%s %T\n", ev.Type, ev.Object)
				continue
			}
			fmt.Fprintf(&b, "%s %s rv=%s node=%q\n", ev.Type, pod.Name, pod.ResourceVersion, pod.Spec.NodeName)
		case <-ctx.Done():
			b.WriteString("no event within 10s\n")
			return b.String()
		}
	}
	return b.String()
}

// saveEtcdSnapshot saves the snapshot of the etcd at endpoint to path, as
// `etcdctl snapshot save` does.
func saveEtcdSnapshot(t *testing.T, endpoint, path string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	rc, err := cli.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// newerRV reports whether resourceVersion a is above b.
func newerRV(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y int64
	if _, err := fmt.Sscan(a, &x); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(b, &y); err != nil {
		t.Fatal(err)
	}
	return x > y
}
