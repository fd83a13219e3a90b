package tests

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/server"
)

// TestFollowerCatchesUpBySnapshot: a follower that misses more writes than the
// leader keeps in its log is sent a snapshot of the range, and afterwards
// serves all the data itself.
func TestFollowerCatchesUpBySnapshot(t *testing.T) {
	c, leader, follower := shortLogClusterFollowerDown(t)
	ctx := ctxT(t)
	// More entries than SnapshotCount + SnapshotCatchUpEntries, so the
	// leader compacts the log the follower would need.
	const keys = 24000
	cli := c.Client(leader.ClientURL)
	putConcurrently(t, cli, 64, keys, func(i int) string { return fmt.Sprintf("snap/%05d", i) }, strconv.Itoa)
	lease, err := cli.Grant(ctx, 300)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "snap/leased", "v", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	c.StartNode(follower)
	fcli := c.Client(follower.ClientURL)
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		get, err := fcli.Get(rctx, "snap/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		cancel()
		if err == nil && get.Count == keys+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower did not catch up: %v %v", get, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := follower.Server.Testing().SnapshotsRecovered(); n == 0 {
		t.Fatal("the follower caught up without installing a snapshot; the test does not test what it says")
	}
	get, err := fcli.Get(ctx, "snap/12345", clientv3.WithSerializable())
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "12345" {
		t.Fatalf("follower value: %v %v", get, err)
	}
	ttl, err := fcli.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 1 {
		t.Fatalf("lease on the follower after the snapshot: %+v %v", ttl, err)
	}
	// The caught-up follower can lead.
	if err := c.Leader().Server.Testing().TransferLeadership(followerReplicaID(c, follower)); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !follower.Server.Testing().IsLeader() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := fcli.Put(ctx, "snap/after", "v"); err != nil {
		t.Fatal(err)
	}
}

func followerReplicaID(c *testcluster.Cluster, n *testcluster.Node) uint64 {
	for i, m := range c.Nodes {
		if m == n {
			return uint64(i + 1)
		}
	}
	return 0
}

// TestSoleNodeTruncatesLogByBytes: on a one-node cluster a range snapshots
// itself (and so truncates its Raft log) every 2 MiB of entries, whatever
// their count; the data survives a restart that replays the short log.
func TestSoleNodeTruncatesLogByBytes(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	value := strings.Repeat("x", 32<<10)
	const keys = 200 // 6.4 MiB of values: three snapshots at least
	for i := range keys {
		if _, err := cli.Put(ctx, fmt.Sprintf("big/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	node := c.Nodes[0]
	// Taken in the background: wait for the third.
	for deadline := time.Now().Add(30 * time.Second); node.Server.Testing().SnapshotsTaken() < 3; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots taken after %d MiB of entries", node.Server.Testing().SnapshotsTaken(), keys*len(value)>>20)
		}
	}
	c.StopNode(node)
	c.StartNode(node)
	cli = c.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		get, err := cli.Get(ctx, "big/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && get.Count == keys {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart: %v %v", get, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSplitChildStartsAfterSnapshotPastSplit: a follower that was down
// while its range split, and whose range sent it a snapshot taken after the
// split (the log it missed was compacted), never applies the split, so the
// split's child never starts there. It gives that replica up, and placement
// adds it back from a snapshot: in the end it runs every range, and every
// range has its three replicas.
func TestSplitChildStartsAfterSnapshotPastSplit(t *testing.T) {
	c, leader, follower := shortLogClusterFollowerDown(t, placing(time.Minute))
	splitAt(t, c, leader, "sp/5")
	cli := c.Client(leader.ClientURL)
	putConcurrently(t, cli, 32, 12000, func(i int) string { return fmt.Sprintf("sp/%d%05d", i%10, i) }, func(int) string { return "v" })
	c.StartNode(follower)
	waitPlaced(t, c, "every range's three replicas running", 60*time.Second, func(ds []*tesserapb.RangeDescriptor) bool {
		for _, d := range ds {
			if len(d.ReplicaNodeIds) != 3 {
				return false
			}
		}
		return len(ds) == 2
	})
	if follower.Server.Testing().SnapshotsRecovered() == 0 {
		t.Fatal("the follower caught up without a snapshot; the test does not test what it says")
	}
}

// shortLogClusterFollowerDown starts three nodes with short Raft logs
// (etcd's --snapshot-count and --snapshot-catchup-entries: the proposer
// packs concurrent writes into one entry, at most one per client, so a few
// thousand writes make well over 300 entries) and stops one that does not
// lead the first range.
func shortLogClusterFollowerDown(t *testing.T, opts ...testcluster.Options) (c *testcluster.Cluster, leader, follower *testcluster.Node) {
	t.Helper()
	opts = append(opts, func(cfg *server.Config) {
		cfg.SnapshotCount = 200
		cfg.SnapshotCatchUpEntries = 100
	})
	c = testcluster.Start(t, 3, opts...)
	leader = c.Leader()
	for _, n := range c.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	c.StopNode(follower)
	return c, leader, follower
}

// putConcurrently writes keys 0..n-1 (named by key, valued by value) from
// the given number of clients, and fails the test on any error.
func putConcurrently(t *testing.T, cli *clientv3.Client, clients, n int, key func(int) string, value func(int) string) {
	t.Helper()
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += clients {
				if _, err := cli.Put(ctx, key(i), value(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
