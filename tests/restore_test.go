package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/etcdsnap"
	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/server"
)

// saveSnapshot saves a snapshot of the store behind cli to a file, as
// `etcdctl snapshot save` does, and returns its path.
func saveSnapshot(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	rc, err := cli.Snapshot(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	path := filepath.Join(t.TempDir(), "snapshot.db")
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
	return path
}

// snapshotRevision is the revision a snapshot file was taken at.
func snapshotRevision(t *testing.T, file string) (rev, compacted int64) {
	t.Helper()
	db := filepath.Join(t.TempDir(), "db")
	if _, err := etcdsnap.CopyVerified(file, db, false); err != nil {
		t.Fatal(err)
	}
	s, err := etcdsnap.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Revision, s.CompactRevision
}

// storeAt describes everything a client sees of a store at revision rev
// (0: the current one, and then its revision): every key with its
// metadata. Reads are tried again while the store is unavailable (a
// cluster still restoring).
func storeAt(t *testing.T, cli *clientv3.Client, rev int64) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(rev))
		cancel()
		if err == nil {
			var b strings.Builder
			if rev == 0 {
				fmt.Fprintf(&b, "revision %d, ", resp.Header.Revision)
			}
			fmt.Fprintf(&b, "%d keys\n", resp.Count)
			for _, kv := range resp.Kvs {
				fmt.Fprintf(&b, "%q=%q create=%d mod=%d version=%d lease=%x\n", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
			}
			return b.String()
		}
		if errors.Is(err, rpctypes.ErrCompacted) || time.Now().After(deadline) {
			return "error: " + err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leasesOf lists a store's leases with their granted TTLs and keys.
func leasesOf(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	ctx := ctxT(t)
	resp, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range resp.Leases {
		ttl, err := cli.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatal(err)
		}
		keys := make([]string, len(ttl.Keys))
		for i, k := range ttl.Keys {
			keys[i] = string(k)
		}
		out = append(out, fmt.Sprintf("%x ttl=%d keys=%s", l.ID, ttl.GrantedTTL, strings.Join(sorted(keys), ",")))
	}
	return strings.Join(sorted(out), "\n")
}

// sorted is a sorted copy of s.
func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// eventsFrom lists the events a watch from rev sees up to revision to,
// one revision's events sorted by key (Tessera's order within a Txn; etcd
// keeps the Txn's).
func eventsFrom(t *testing.T, cli *clientv3.Client, rev, to int64) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, batch []string
	batchRev := int64(0)
	for resp := range cli.Watch(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			return strings.Join(append(out, batch...), "") + "error: " + err.Error()
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision != batchRev {
				out, batch, batchRev = append(out, sorted(batch)...), nil, ev.Kv.ModRevision
			}
			batch = append(batch, fmt.Sprintf("%s %q=%q mod=%d create=%d version=%d lease=%x\n", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision, ev.Kv.CreateRevision, ev.Kv.Version, ev.Kv.Lease))
		}
		if batchRev >= to {
			return strings.Join(append(out, sorted(batch)...), "")
		}
	}
	return strings.Join(append(out, batch...), "") + "watch ended early"
}

// fillHistory writes a history with overwrites, deletions, a Txn of
// several keys, leases with keys and a compaction in its middle, and
// returns the revision compacted at.
func fillHistory(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx := ctxT(t)
	// A cluster just started or split may not know its ranges' leaders
	// for a moment (etcd's "no leader", Unavailable): a call refused so is
	// tried again, and logged.
	do := func(what string, call func() error) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := call()
			if err == nil {
				return
			}
			// clientv3 hands back etcd's known errors as rpctypes values.
			retry := status.Code(err) == codes.Unavailable || errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrLeaderChanged)
			if !retry || time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			t.Logf("%s: %v; trying again", what, err)
		}
	}
	ignore := func(_ any, err error) error { return err }
	var lease, other *clientv3.LeaseGrantResponse
	do("grant", func() (err error) { lease, err = cli.Grant(ctx, 600); return err })
	do("grant", func() (err error) { other, err = cli.Grant(ctx, 900); return err })
	for i := range 30 {
		do("put", func() error { return ignore(cli.Put(ctx, fmt.Sprintf("k/%02d", i), fmt.Sprintf("v%d", i))) })
	}
	for i := range 10 {
		do("put", func() error { return ignore(cli.Put(ctx, fmt.Sprintf("k/%02d", i*3), fmt.Sprintf("w%d", i))) })
	}
	do("delete", func() error { return ignore(cli.Delete(ctx, "k/01")) })
	do("put with a lease", func() error { return ignore(cli.Put(ctx, "leased/a", "x", clientv3.WithLease(lease.ID))) })
	do("put with a lease", func() error { return ignore(cli.Put(ctx, "leased/b", "y", clientv3.WithLease(other.ID))) })
	var compacted int64
	do("get", func() error {
		resp, err := cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil {
			compacted = resp.Header.Revision
		}
		return err
	})
	do("compact", func() error { return ignore(cli.Compact(ctx, compacted)) })
	do("txn", func() error {
		return ignore(cli.Txn(ctx).Then(
			clientv3.OpPut("t/1", "one"), clientv3.OpPut("t/2", "two"), clientv3.OpDelete("k/05"), clientv3.OpPut("k/10", "txn"),
		).Commit())
	})
	do("put with a lease", func() error { return ignore(cli.Put(ctx, "leased/a", "x2", clientv3.WithLease(lease.ID))) })
	do("put with a lease", func() error { return ignore(cli.Put(ctx, "k/02", "moved", clientv3.WithLease(other.ID))) })
	do("delete", func() error { return ignore(cli.Delete(ctx, "k/2", clientv3.WithPrefix())) })
	do("put", func() error { return ignore(cli.Put(ctx, "z", "last")) })
	return compacted
}

// TestImportFromEtcd fills a real etcd with a history (overwrites,
// deletions, a Txn, leases, a compaction), saves its snapshot, and
// prepares a Tessera data directory from it with `tessera ctl
// import-etcd-snapshot`: Tessera then shows, through clientv3, the same
// keys with the same metadata at every revision from the compaction on,
// the same watch history, the same leases, and writes go on at the
// revision etcd's next write would take.
func TestImportFromEtcd(t *testing.T) {
	bin := binaries(t)
	e := startEtcd(t)
	ecli := etcdClient(t, e)
	compacted := fillHistory(t, ecli)
	file := saveSnapshot(t, ecli)

	c := testcluster.Start(t, 1, func(cfg *server.Config) {
		out, err := exec.Command(filepath.Join(bin, "tessera"), "ctl", "import-etcd-snapshot", file, "--data-dir", cfg.DataDir).CombinedOutput()
		if err != nil {
			t.Fatalf("tessera ctl import-etcd-snapshot: %v\n%s", err, out)
		}
	})
	tcli := c.Client()
	current := storeAt(t, ecli, 0)
	if got := storeAt(t, tcli, 0); got != current {
		t.Fatalf("imported store:\n%s\netcd:\n%s", got, current)
	}
	head, err := ecli.Get(ctxT(t), "z")
	if err != nil {
		t.Fatal(err)
	}
	for rev := compacted - 1; rev <= head.Header.Revision; rev++ {
		if got, want := storeAt(t, tcli, rev), storeAt(t, ecli, rev); got != want {
			t.Fatalf("at revision %d, Tessera:\n%s\netcd:\n%s", rev, got, want)
		}
	}
	if got, want := eventsFrom(t, tcli, compacted+1, head.Header.Revision), eventsFrom(t, ecli, compacted+1, head.Header.Revision); got != want {
		t.Fatalf("watch from %d, Tessera:\n%s\netcd:\n%s", compacted+1, got, want)
	}
	if got, want := leasesOf(t, tcli), leasesOf(t, ecli); got != want {
		t.Fatalf("leases, Tessera:\n%s\netcd:\n%s", got, want)
	}
	ep, err := ecli.Put(ctxT(t), "after", "1")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tcli.Put(ctxT(t), "after", "1")
	if err != nil {
		t.Fatal(err)
	}
	if tp.Header.Revision != ep.Header.Revision {
		t.Fatalf("next write at revision %d, etcd's at %d", tp.Header.Revision, ep.Header.Revision)
	}
}

// TestSnapshotRestore saves a snapshot from one member of a three-node
// cluster with several ranges while a write load runs, and restores it
// into a new three-node cluster, every member prepared with `tessera ctl
// restore`: the new cluster serves every key, value, revision and lease
// a read at the snapshot's revision returned, answers below that
// revision as compacted, and writes above it. The snapshot also restores
// into a real etcd with etcdutl (v3.7.3), the way out of Tessera, which
// then shows the same.
func TestSnapshotRestore(t *testing.T) {
	bin := binaries(t)
	src := testcluster.Start(t, 3)
	ctx := ctxT(t)
	for _, key := range []string{"g", "p", "w"} {
		if err := src.Nodes[0].Server.SplitRange(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	waitRanges(t, src, 4)
	cli := src.Client()
	fillHistory(t, cli)
	for i := range 40 {
		if _, err := cli.Put(ctx, fmt.Sprintf("%c/key", 'a'+i%26), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Writes go on while the snapshot is taken.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = cli.Put(ctx, fmt.Sprintf("%c/load", 'a'+i%26), fmt.Sprint(i))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	file := saveSnapshot(t, src.Client(src.Nodes[1].ClientURL))
	close(stop)
	wg.Wait()
	rev, compacted := snapshotRevision(t, file)
	if compacted != rev {
		t.Fatalf("snapshot at revision %d compacted at %d, want its revision", rev, compacted)
	}
	want := fmt.Sprintf("revision %d, %s", rev, storeAt(t, cli, rev))
	wantLeases := leasesOf(t, cli)

	dst := testcluster.Start(t, 3, func(cfg *server.Config) {
		out, err := exec.Command(filepath.Join(bin, "tessera"), "ctl", "restore", file, "--data-dir", cfg.DataDir).CombinedOutput()
		if err != nil {
			t.Fatalf("tessera ctl restore: %v\n%s", err, out)
		}
	})
	for _, n := range dst.Nodes {
		dcli := dst.Client(n.ClientURL)
		if got := storeAt(t, dcli, 0); got != want {
			t.Fatalf("%s after the restore:\n%s\nwant (the source at revision %d):\n%s", n.Config.Name, got, rev, want)
		}
	}
	dcli := dst.Client()
	if got := storeAt(t, dcli, rev-1); !strings.Contains(got, "compacted") {
		t.Fatalf("below the snapshot's revision: %s", got)
	}
	if got := leasesOf(t, dcli); got != wantLeases {
		t.Fatalf("leases after the restore:\n%s\nwant:\n%s", got, wantLeases)
	}
	put, err := dcli.Put(ctx, "after", "1")
	if err != nil || put.Header.Revision != rev+1 {
		t.Fatalf("first write after the restore: %v, %v; want revision %d", put, err, rev+1)
	}

	// The way out: etcdutl restores the same file into etcd.
	dataDir := filepath.Join(t.TempDir(), "etcd")
	out, err := exec.Command(etcdutlBinary(t), "snapshot", "restore", file, "--data-dir", dataDir,
		"--name", "differential", "--initial-cluster", "differential=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdutl snapshot restore: %v\n%s", err, out)
	}
	ecli := etcdClient(t, startEtcd(t, "--data-dir", dataDir))
	if got := storeAt(t, ecli, 0); got != want {
		t.Fatalf("etcd restored from the snapshot:\n%s\nwant:\n%s", got, want)
	}
	if got := leasesOf(t, ecli); got != wantLeases {
		t.Fatalf("etcd's leases:\n%s\nwant:\n%s", got, wantLeases)
	}
}

// TestMakeMirrorIntoTessera mirrors a live etcd into Tessera with
// `etcdctl make-mirror` (v3.7.3): the keys etcd holds when it starts and
// every write after, deletions included, reach Tessera (at Tessera's own
// revisions: a mirror copies keys and values, not revisions).
func TestMakeMirrorIntoTessera(t *testing.T) {
	bin := binaries(t)
	e := startEtcd(t)
	ecli := etcdClient(t, e)
	ctx := ctxT(t)
	for i := range 50 {
		if _, err := ecli.Put(ctx, fmt.Sprintf("m/%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	c := testcluster.Start(t, 1)
	tcli := c.Client()
	cmd := exec.Command(filepath.Join(bin, "etcdctl"), "make-mirror", "--endpoints", e.endpoint, "--prefix", "m/", strings.TrimPrefix(c.Nodes[0].ClientURL, "http://"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	mirror, err := startChild(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = mirror.cmd.Process.Kill()
		<-mirror.exited
	})
	for i := range 50 {
		if _, err := ecli.Put(ctx, fmt.Sprintf("m/%02d", i), fmt.Sprintf("after-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ecli.Delete(ctx, "m/4", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if _, err := ecli.Put(ctx, "m/last", "done"); err != nil {
		t.Fatal(err)
	}
	values := func(cli *clientv3.Client) string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, "m/", clientv3.WithPrefix())
		if err != nil {
			return err.Error()
		}
		var b strings.Builder
		for _, kv := range resp.Kvs {
			fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
		}
		return b.String()
	}
	want := values(ecli)
	deadline := time.Now().Add(30 * time.Second)
	for got := values(tcli); got != want; got = values(tcli) {
		if time.Now().After(deadline) {
			t.Fatalf("Tessera after 30s of make-mirror:\n%s\netcd:\n%s\nmake-mirror printed:\n%s", got, want, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestJoinWhileRestoring: a node that joins a cluster while its first
// member loads a snapshot, and gets a replica of the range being loaded,
// refuses clients (serializable reads too), as the members do, until the
// load is done, then serves the snapshot's keys.
func TestJoinWhileRestoring(t *testing.T) {
	src := testcluster.Start(t, 1)
	cli := src.Client()
	ctx := ctxT(t)
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("j/%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	file := saveSnapshot(t, cli)
	rev, _ := snapshotRevision(t, file)

	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseLoad := func() { releaseOnce.Do(func() { close(release) }) }
	dst := testcluster.Start(t, 1, func(cfg *server.Config) {
		if cfg.Name == "n1" {
			if _, err := node.PrepareRestore(file, cfg.DataDir, false); err != nil {
				t.Fatal(err)
			}
		}
		cfg.Knobs.BeforeIngestChunk = func(uint64) { <-release }
	})
	t.Cleanup(releaseLoad) // before the nodes close
	joined := dst.AddNode()
	// The joined node gets a replica of the range being loaded, so it
	// could answer serializable reads from it.
	if _, err := dst.Nodes[0].Server.Testing().ChangeReplicas(ctx, 2, 2, 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range dst.Nodes {
		// A bare connection: clientv3 would retry Unavailable until its
		// deadline.
		conn, err := grpc.NewClient(strings.TrimPrefix(n.ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		for _, serializable := range []bool{false, true} {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = pb.NewKVClient(conn).Range(rctx, &pb.RangeRequest{Key: []byte("j/00"), Serializable: serializable})
			cancel()
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "restoring") {
				t.Fatalf("%s answered a read (serializable %v) during the restore: %v", n.Config.Name, serializable, err)
			}
		}
		conn.Close()
	}
	releaseLoad()
	want := fmt.Sprintf("revision %d, %s", rev, storeAt(t, cli, rev))
	if got := storeAt(t, dst.Client(joined.ClientURL), 0); got != want {
		t.Fatalf("%s after the restore:\n%s\nwant:\n%s", joined.Config.Name, got, want)
	}
}
