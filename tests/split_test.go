package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// splitAt splits through a node, waiting for every node to run the new range.
// An Unavailable answer (leaders moving) is retried, as an operator would
// (trySplit).
func splitAt(t testing.TB, c *testcluster.Cluster, via *testcluster.Node, key string) {
	t.Helper()
	if err := trySplit(c, via, key); err != nil {
		t.Fatalf("split at %q: %v", key, err)
	}
}

// waitRanges waits until every node holding replicas runs want ranges, and
// every node holding none routes to want ranges.
func waitRanges(t *testing.T, c *testcluster.Cluster, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	count := func(n *testcluster.Node) int {
		if held := n.Server.Testing().RangeCount(); held > 0 {
			return held
		}
		return n.Server.Testing().RoutedRangeCount()
	}
	for _, n := range c.Nodes {
		for n.Server != nil && count(n) < want {
			if time.Now().After(deadline) {
				t.Fatalf("%s runs or routes to %d ranges, want %d", n.Config.Name, count(n), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// waitRecordedRanges waits until the meta range records exactly the ranges
// every node runs (ids, bounds, generations, replicas), as each range's
// leader records them after a split.
func waitRecordedRanges(t *testing.T, c *testcluster.Cluster) {
	t.Helper()
	ctx := ctxT(t)
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		for {
			recorded, rerr := n.Server.Testing().RecordedRanges(ctx)
			running, err := n.Server.Testing().Ranges(ctx)
			if err != nil {
				t.Fatal(err)
			}
			diff := describeRanges(running) != describeDescriptors(recorded)
			if rerr == nil && !diff {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the meta range records\n%s(err %v)\nbut the ranges are\n%s", n.Config.Name, describeDescriptors(recorded), rerr, describeRanges(running))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func describeRanges(rs []*tesserapb.RangeInfo) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%d [%q, %q) gen %d replicas %v\n", r.RangeId, r.StartKey, r.EndKey, r.Generation, r.ReplicaNodeIds)
	}
	return b.String()
}

func describeDescriptors(ds []*tesserapb.RangeDescriptor) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "%d [%q, %q) gen %d replicas %v\n", d.RangeId, d.StartKey, d.EndKey, d.Generation, d.ReplicaNodeIds)
	}
	return b.String()
}

// TestSplitsUnderWrites: manual splits while clients write through every node;
// afterwards every acknowledged key reads back, in key order, under one header
// revision, and a multi-range list agrees with per-range reads.
func TestSplitsUnderWrites(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for w := range 6 {
		cli := c.Client(c.Nodes[w%3].ClientURL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("k/%c/%04d", 'a'+byte((i*7+w)%26), i*6+w)
				if _, err := cli.Put(ctx, k, k); err != nil {
					continue
				}
				mu.Lock()
				acked[k] = k
				mu.Unlock()
			}
		}()
	}
	splits := []string{"k/m", "k/d", "k/t", "k/g", "k/p", "k/w", "k/b", "k/j"}
	for i, key := range splits {
		time.Sleep(100 * time.Millisecond)
		splitAt(t, c, c.Nodes[i%3], key)
	}
	// Keep writing into the new ranges for a while.
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	waitRanges(t, c, len(splits)+1)
	waitRecordedRanges(t, c)

	for _, node := range c.Nodes {
		cli := c.Client(node.ClientURL)
		get, err := cli.Get(ctx, "k/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, node.Config.Name, get.Kvs, acked)
		if !sort.SliceIsSorted(get.Kvs, func(i, j int) bool { return bytes.Compare(get.Kvs[i].Key, get.Kvs[j].Key) < 0 }) {
			t.Fatalf("%s: a list across ranges is not in key order", node.Config.Name)
		}
		if int(get.Count) != len(get.Kvs) {
			t.Fatalf("%s: count %d, %d kvs", node.Config.Name, get.Count, len(get.Kvs))
		}
	}
	t.Logf("%d acknowledged writes across %d ranges", len(acked), len(splits)+1)

	// Limits, more and count across ranges, ascending and descending, and
	// pagination the way kube-apiserver lists.
	cli := c.Client()
	all, err := cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	page, err := cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithLimit(10))
	if err != nil || len(page.Kvs) != 10 || !page.More || page.Count != all.Count {
		t.Fatalf("limit 10 across ranges: %d kvs more=%v count=%d (want %d), %v", len(page.Kvs), page.More, page.Count, all.Count, err)
	}
	desc, err := cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(3))
	if err != nil || !bytes.Equal(desc.Kvs[0].Key, all.Kvs[len(all.Kvs)-1].Key) {
		t.Fatalf("descending across ranges: %v %v", desc, err)
	}
	var listed []string
	rev := int64(0)
	next := "k/"
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd("k/")), clientv3.WithLimit(997)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, next, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			listed = append(listed, string(kv.Key))
		}
		if !resp.More {
			break
		}
		next = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(listed) != len(all.Kvs) {
		t.Fatalf("paginated list found %d keys, want %d", len(listed), len(all.Kvs))
	}
	// RangeStream across ranges.
	stream, err := pbKV(cli).RangeStream(ctx, rangeReq("k/", 0))
	if err != nil {
		t.Fatal(err)
	}
	var streamed int
	var last *pb.RangeResponse
	for {
		msg, err := stream.Recv()
		if err != nil {
			break
		}
		streamed += len(msg.RangeResponse.Kvs)
		last = msg.RangeResponse
	}
	if streamed != len(all.Kvs) || last == nil || last.Count != all.Count || last.Header == nil {
		t.Fatalf("RangeStream across ranges: %d kvs, last %v", streamed, last)
	}
}

// TestMultiRangeWrites: a Txn and a DeleteRange spanning ranges apply in
// every range at one revision, as one store would apply them.
func TestMultiRangeWrites(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	for _, k := range []string{"a", "m", "z"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "v"), clientv3.Compare(clientv3.Value("z"), "=", "v")).
		Then(clientv3.OpPut("a", "1", clientv3.WithPrevKV()), clientv3.OpPut("z", "1"), clientv3.OpGet("", clientv3.WithFromKey())).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("multi-range txn: %+v %v", txn, err)
	}
	rev := txn.Header.Revision
	list := txn.Responses[2].GetResponseRange()
	if prev := txn.Responses[0].GetResponsePut().PrevKv; prev == nil || string(prev.Value) != "v" || list.Count != 3 ||
		string(list.Kvs[0].Value) != "1" || string(list.Kvs[2].Value) != "1" || list.Kvs[0].ModRevision != rev || list.Kvs[2].ModRevision != rev {
		t.Fatalf("multi-range txn answered %+v", txn)
	}
	del, err := cli.Delete(ctx, "a", clientv3.WithRange("zz"), clientv3.WithPrevKV())
	if err != nil || del.Deleted != 3 || len(del.PrevKvs) != 3 || string(del.PrevKvs[0].Key) != "a" || string(del.PrevKvs[2].Key) != "z" {
		t.Fatalf("multi-range delete: %+v %v", del, err)
	}
	get, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil || get.Count != 0 || get.Header.Revision != del.Header.Revision {
		t.Fatalf("after the delete: %+v %v", get, err)
	}
	// A split at an existing boundary or at the empty key is refused.
	if err := c.Nodes[0].Server.SplitRange(ctx, "m"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("split at a boundary: %v", err)
	}
	if err := c.Nodes[0].Server.SplitRange(ctx, ""); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("split at the empty key: %v", err)
	}
	waitRanges(t, c, 2)
}

// TestLeasesAcrossRanges: a lease's keys in two ranges are both deleted when it
// is revoked and when it expires; keep-alive and time-to-live see all keys.
func TestLeasesAcrossRanges(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client()
	splitAt(t, c, c.Nodes[1], "m")
	waitRanges(t, c, 2)
	lease := grantWithKeys(t, ctx, cli, 30, "a", "z")
	ttl, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 2 {
		t.Fatalf("time to live across ranges: TTL %d granted %d keys %q, %v", ttl.TTL, ttl.GrantedTTL, ttl.Keys, err)
	}
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if get, err := cli.Get(ctx, "", clientv3.WithFromKey()); err != nil || get.Count != 0 {
		t.Fatalf("keys of a revoked lease remain: %v %v", get, err)
	}
	grantWithKeys(t, ctx, cli, 1, "b", "y")
	waitNoKeys(t, ctx, cli, "keys of an expired lease remain in some range")
}

// TestCtlRanges: `tessera ctl ranges --json` and `tessera ctl split` against a
// running binary agree with the data.
func TestCtlRanges(t *testing.T) {
	p := startProcess(t, t.TempDir())
	cli := p.client()
	defer cli.Close()
	ctx := ctxT(t)
	for _, k := range []string{"apple", "mango", "zebra"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	ctl := func(args ...string) (string, error) {
		return runBinary(t, "tessera", append([]string{"ctl", "--endpoints", p.clientURL}, args...)...)
	}
	if out, err := ctl("split", "m"); err != nil || !strings.Contains(out, "split range") {
		t.Fatalf("ctl split: %q %v", out, err)
	}
	if out, err := ctl("split", "m"); err == nil || !strings.Contains(err.Error(), "already a range boundary") {
		t.Fatalf("ctl split at a boundary: %q %v", out, err)
	}
	out, err := ctl("ranges", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ranges []struct {
		ID     uint64 `json:"id"`
		Start  string `json:"start"`
		End    string `json:"end"`
		Leader uint64 `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &ranges); err != nil {
		t.Fatalf("ctl ranges --json: %v\n%s", err, out)
	}
	if len(ranges) != 2 || ranges[0].Start != "" || ranges[0].End != "m" || ranges[1].Start != "m" || ranges[1].End != "" || ranges[0].Leader == 0 {
		t.Fatalf("ranges = %+v", ranges)
	}
	get, err := cli.Get(ctx, "a", clientv3.WithFromKey())
	if err != nil || get.Count != 3 {
		t.Fatalf("keys after the split: %v %v", get, err)
	}
	if out, err := ctl("ranges"); err != nil || !strings.Contains(out, "LEADER") {
		t.Fatalf("ctl ranges: %q %v", out, err)
	}
}

// TestSizeTriggeredSplits: with a small --range-max-bytes, writing makes the
// ranges split on their own; afterwards the ranges partition the keyspace,
// every acknowledged key reads back, and each key is in exactly one range.
func TestSizeTriggeredSplits(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.RangeMaxBytes = 1 << 20
		cfg.SplitCheckInterval = 200 * time.Millisecond
	})
	ctx := ctxT(t)
	cli := c.Client()
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
	)
	for w := range 16 {
		rng := rand.New(rand.NewSource(int64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 16000; i += 16 {
				// Incompressible values: the limit is on bytes on disk.
				buf := make([]byte, 1024)
				for j := range buf {
					buf[j] = 'a' + byte(rng.Intn(26))
				}
				value := string(buf)
				k := fmt.Sprintf("size/%06d", (i*7919)%16000)
				if _, err := cli.Put(ctx, k, value); err != nil {
					t.Errorf("put %s: %v", k, err)
					return
				}
				mu.Lock()
				acked[k] = value
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for c.Nodes[0].Server.Testing().RangeCount() < 3 {
		if time.Now().After(deadline) {
			ranges, _ := c.Nodes[0].Server.Testing().Ranges(ctx)
			t.Fatalf("only %d ranges after writing 16 MiB with --range-max-bytes=1MiB: %v", c.Nodes[0].Server.Testing().RangeCount(), ranges)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The ranges partition the keyspace: each starts where the previous ended.
	var prevEnd []byte
	for i, r := range ranges {
		if !bytes.Equal(r.StartKey, prevEnd) {
			t.Fatalf("range %d starts at %q, the previous one ends at %q", r.RangeId, r.StartKey, prevEnd)
		}
		prevEnd = r.EndKey
		if i == len(ranges)-1 && len(r.EndKey) != 0 {
			t.Fatalf("the last range ends at %q, not at the end of the keyspace", r.EndKey)
		}
	}
	get, err := cli.Get(ctx, "size/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	requireAcked(t, "after size splits", get.Kvs, acked)
	// Each key in exactly one range: per-range reads add up to the whole.
	var total int64
	for _, r := range ranges {
		end := r.EndKey
		if len(end) == 0 {
			end = []byte{0}
		}
		start := r.StartKey
		if len(start) == 0 {
			start = []byte{0} // no key is empty
		}
		resp, err := cli.Get(ctx, string(start), clientv3.WithRange(string(end)), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		total += resp.Count
	}
	if all, _ := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly()); total != all.Count {
		t.Fatalf("per-range counts add up to %d, the whole keyspace has %d", total, all.Count)
	}
	t.Logf("%d ranges after %d writes", len(ranges), len(acked))
}

// TestSortAcrossRanges: sorting by a target other than the key, with a limit,
// over keys in three ranges gives what one store gives.
func TestSortAcrossRanges(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	values := map[string]string{"s/a": "9", "s/b": "1", "s/m": "5", "s/n": "3", "s/x": "7", "s/y": "2"}
	for _, k := range []string{"s/a", "s/b", "s/m", "s/n", "s/x", "s/y"} {
		if _, err := cli.Put(ctx, k, values[k]); err != nil {
			t.Fatal(err)
		}
	}
	splitAt(t, c, c.Nodes[0], "s/m")
	splitAt(t, c, c.Nodes[0], "s/x")
	waitRanges(t, c, 3)
	get, err := cli.Get(ctx, "s/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortAscend), clientv3.WithLimit(3))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range get.Kvs {
		got = append(got, string(kv.Key))
	}
	if strings.Join(got, ",") != "s/b,s/y,s/n" || !get.More || get.Count != 6 {
		t.Fatalf("sorted by value across ranges: %v more=%v count=%d", got, get.More, get.Count)
	}
	byMod, err := cli.Get(ctx, "s/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(2))
	if err != nil || string(byMod.Kvs[0].Key) != "s/y" || string(byMod.Kvs[1].Key) != "s/x" {
		t.Fatalf("sorted by mod revision, descending, across ranges: %v %v", byMod, err)
	}
}

// TestLoadTriggeredSplit: a range that serves more than --range-split-qps for
// several intervals in a row splits at a key inside the load, and `ranges`
// reports the request rates.
func TestLoadTriggeredSplit(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.RangeSplitQPS = 50
		cfg.SplitCheckInterval = 200 * time.Millisecond
	})
	ctx := ctxT(t)
	cli := c.Client()
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("load/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = cli.Get(ctx, fmt.Sprintf("load/%02d", (i*13+w*7)%100))
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	var sawQPS bool
	for c.Nodes[0].Server.Testing().RangeCount() < 2 {
		if ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx); err == nil && len(ranges) > 0 && ranges[0].Qps > 50 {
			sawQPS = true
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatal("no load-based split within 20s of sustained load")
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	split := string(ranges[1].StartKey)
	if split <= "load/00" || split > "load/99" {
		t.Fatalf("load split at %q, outside the keys under load", split)
	}
	if !sawQPS {
		t.Error("ranges never reported the request rate")
	}
	get, err := cli.Get(ctx, "load/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || get.Count != 100 {
		t.Fatalf("after the load split: %v %v", get, err)
	}
}

// TestRangeStreamDuringSplits: streams over the whole keyspace while the
// ranges split under them each deliver every key, in order, once.
func TestRangeStreamDuringSplits(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	const n = 3000
	for i := range n {
		if _, err := cli.Put(ctx, fmt.Sprintf("rs/%05d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 8; i++ {
			time.Sleep(100 * time.Millisecond)
			splitAt(t, c, c.Nodes[0], fmt.Sprintf("rs/%05d", i*n/9))
		}
	}()
	streams := 0
	for {
		select {
		case <-done:
			if streams == 0 {
				t.Fatal("no stream ran during the splits")
			}
			t.Logf("%d streams during 8 splits", streams)
			return
		default:
		}
		stream, err := pbKV(cli).RangeStream(ctx, rangeReq("rs/", 0))
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		var last *pb.RangeResponse
		for {
			msg, err := stream.Recv()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("stream %d failed during splits: %v", streams, err)
				}
				break
			}
			for _, kv := range msg.RangeResponse.Kvs {
				keys = append(keys, string(kv.Key))
			}
			last = msg.RangeResponse
		}
		if len(keys) != n || last == nil || last.Count != n || !sort.StringsAreSorted(keys) {
			t.Fatalf("stream %d: %d keys (count %v), want %d in order", streams, len(keys), last, n)
		}
		streams++
	}
}

// splitAndPut splits the keyspace at k00, k01, …, through the nodes in turn,
// and after each split writes a key into the new range within putTimeout.
func splitAndPut(t *testing.T, c *testcluster.Cluster, splits int, putTimeout time.Duration) {
	t.Helper()
	cli := c.Client(c.Endpoints()...)
	for i := range splits {
		key := fmt.Sprintf("k%02d", i)
		splitAt(t, c, c.Nodes[i%len(c.Nodes)], key)
		waitRanges(t, c, i+2)
		ctx, cancel := context.WithTimeout(ctxT(t), putTimeout)
		_, err := cli.Put(ctx, key+"x", "v")
		cancel()
		if err != nil {
			t.Fatalf("put into the range split at %q: %v", key, err)
		}
	}
}

// leadersByMember counts the data ranges each member leads, as n sees them.
func leadersByMember(t *testing.T, n *testcluster.Node) map[uint64]int {
	t.Helper()
	ranges, err := n.Server.Testing().Ranges(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	led := map[uint64]int{}
	for _, r := range ranges {
		led[r.LeaderNodeId]++
	}
	return led
}

// TestSplitsSpreadLeadership: on three nodes, each range a split makes is
// elected at once on the member leading the fewest ranges, so after a run of
// splits every member leads some. The election timeout is 3 s here, so a
// range left to Raft's own timers would have no leader for at least 3 s;
// each Put into a new range is given 2.5 s.
func TestSplitsSpreadLeadership(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *serverConfig) { cfg.ElectionTimeout = 3 * time.Second })
	const splits = 6
	splitAndPut(t, c, splits, 2500*time.Millisecond)
	led := leadersByMember(t, c.Nodes[0])
	for id := uint64(1); id <= 3; id++ {
		if led[id] == 0 {
			t.Errorf("member %d leads no range after %d splits: leaders %v", id, splits, led)
		}
	}
}

// TestLeaderBalancer: after every range's leadership is moved to one member
// (as a failover can leave them), the placement schedulers on the meta
// leader hand ranges to the others until each member leads within one of
// the others. The periodic runs are off; the test runs them itself.
func TestLeaderBalancer(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *serverConfig) { cfg.Knobs.NodeHeartbeatInterval = 50 * time.Millisecond })
	const splits = 6
	splitAndPut(t, c, splits, 10*time.Second)
	waitFor := func(what string, cond func(map[uint64]int) bool, step func()) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for led := leadersByMember(t, c.Nodes[0]); !cond(led); led = leadersByMember(t, c.Nodes[0]) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: leaders %v", what, led)
			}
			step()
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("every range led by member 1", func(led map[uint64]int) bool { return led[1] == splits+1 }, func() {
		_ = c.Nodes[0].Server.Testing().TransferLeadership(1)
	})
	waitFor("the leaders evened out", func(led map[uint64]int) bool {
		return led[1] <= 3 && led[2] >= 2 && led[3] >= 2
	}, func() {
		for _, n := range c.Nodes {
			n.Server.Testing().PlaceOnce()
		}
	})
}

// TestSortedRangeAsEtcd: a Range sorted by value answers as etcd's one store
// does (server/etcdserver/txn/range.go), on one range and across three: with
// sort order NONE and a limit, etcd sorts only the first limit+1 keys in key
// order; with ASCEND it sorts every key and cuts to the limit; keys_only
// sorted by value is sorted on the values it then drops.
func TestSortedRangeAsEtcd(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	for _, kv := range [][2]string{{"o/a", "3"}, {"o/b", "1"}, {"o/c", "2"}, {"o/x", "0"}, {"o/y", "5"}} {
		if _, err := cli.Put(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	byValue := func(order pb.RangeRequest_SortOrder, limit int64, keysOnly bool) *pb.RangeRequest {
		return &pb.RangeRequest{Key: []byte("o/"), RangeEnd: []byte("o0"), SortTarget: pb.RangeRequest_VALUE, SortOrder: order, Limit: limit, KeysOnly: keysOnly}
	}
	cases := []struct {
		name string
		req  *pb.RangeRequest
		keys string
		more bool
	}{
		{"ascending, limit 1", byValue(pb.RangeRequest_ASCEND, 1, false), "o/x", true},
		{"order NONE, limit 1", byValue(pb.RangeRequest_NONE, 1, false), "o/b", true},
		{"order NONE, limit 3", byValue(pb.RangeRequest_NONE, 3, false), "o/x,o/b,o/c", true},
		{"descending, limit 2", byValue(pb.RangeRequest_DESCEND, 2, false), "o/y,o/a", true},
		{"keys only, ascending", byValue(pb.RangeRequest_ASCEND, 0, true), "o/x,o/b,o/c,o/a,o/y", false},
	}
	check := func(where string) {
		t.Helper()
		for _, tc := range cases {
			resp, err := pbKV(cli).Range(ctx, tc.req)
			if err != nil {
				t.Fatalf("%s, %s: %v", where, tc.name, err)
			}
			var keys []string
			for _, kv := range resp.Kvs {
				keys = append(keys, string(kv.Key))
				if tc.req.KeysOnly && len(kv.Value) != 0 {
					t.Fatalf("%s, %s: keys only answered value %q", where, tc.name, kv.Value)
				}
			}
			if got := strings.Join(keys, ","); got != tc.keys || resp.More != tc.more || resp.Count != 5 {
				t.Fatalf("%s, %s: %s more=%v count=%d; etcd answers %s more=%v count=5", where, tc.name, got, resp.More, resp.Count, tc.keys, tc.more)
			}
		}
	}
	check("one range")
	splitAt(t, c, c.Nodes[0], "o/c")
	splitAt(t, c, c.Nodes[0], "o/y")
	waitRanges(t, c, 3)
	check("three ranges")
}

// TestTxnInOneRangeAsEtcd: a Txn whose keys lie in one range is not refused
// as spanning ranges because of an empty span (range_end at or before its
// key) elsewhere, and a lease named only in the branch not taken does not
// refuse it (etcd checks the operations it runs); a Put that runs with an
// unknown lease is refused "lease not found".
func TestTxnInOneRangeAsEtcd(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	empty := &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("z"), RangeEnd: []byte("a")}}}
	put := func(key string, leaseID int64) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: leaseID}}}
	}
	// The empty span [z, a) lies "in" the second range by its key; the Put
	// is in the first.
	if _, err := pbKV(cli).Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("b", 0), empty}}); err != nil {
		t.Fatalf("txn in one range with an empty span: %v", err)
	}
	// On the second range (not the leases' home range), the branch taken
	// names a live lease, the other one a lease that does not exist.
	const unknownLease = 999
	txn := &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("n"), Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Version{Version: 0}}},
		Success: []*pb.RequestOp{put("n", int64(lease.ID))},
		Failure: []*pb.RequestOp{put("n", unknownLease)},
	}
	resp, err := pbKV(cli).Txn(ctx, txn)
	if err != nil || !resp.Succeeded {
		t.Fatalf("txn whose branch not taken names an unknown lease: %v %v", resp, err)
	}
	// Now the failure branch runs, with the unknown lease.
	if _, err := pbKV(cli).Txn(ctx, txn); err == nil || err.Error() != rpctypes.ErrGRPCLeaseNotFound.Error() {
		t.Fatalf("txn running a Put with an unknown lease: %v, want %v", err, rpctypes.ErrGRPCLeaseNotFound)
	}
}

// TestSortTiesAsEtcd: kvs with equal sort values (many keys of one version)
// come out in the order a real etcd v3.7.3 gives them, on one range and
// across three: Tessera sorts as etcd's store does, not stably.
func TestSortTiesAsEtcd(t *testing.T) {
	e := startEtcd(t)
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	etcdKV, tesseraKV := pb.NewKVClient(e.conn), pbKV(c.Client())
	for _, kv := range []pb.KVClient{etcdKV, tesseraKV} {
		for i := range 20 {
			for range i%3 + 1 {
				if _, err := kv.Put(ctx, &pb.PutRequest{Key: fmt.Appendf(nil, "t/%02d", i), Value: fmt.Appendf(nil, "%d", i%4)}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var reqs []*pb.RangeRequest
	for _, target := range []pb.RangeRequest_SortTarget{pb.RangeRequest_VERSION, pb.RangeRequest_VALUE} {
		for _, order := range []pb.RangeRequest_SortOrder{pb.RangeRequest_NONE, pb.RangeRequest_ASCEND, pb.RangeRequest_DESCEND} {
			for _, limit := range []int64{0, 5, 15} {
				reqs = append(reqs, &pb.RangeRequest{Key: []byte("t/"), RangeEnd: []byte("t0"), SortTarget: target, SortOrder: order, Limit: limit, KeysOnly: true})
			}
		}
	}
	keys := func(resp *pb.RangeResponse) string {
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Key))
		}
		return fmt.Sprintf("%s more=%v count=%d", strings.Join(out, ","), resp.More, resp.Count)
	}
	check := func(where string) {
		t.Helper()
		for _, req := range reqs {
			want, err := etcdKV.Range(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tesseraKV.Range(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if keys(got) != keys(want) {
				t.Fatalf("%s, sorted by %v %v, limit %d:\n tessera %s\n etcd    %s", where, req.SortTarget, req.SortOrder, req.Limit, keys(got), keys(want))
			}
		}
	}
	check("one range")
	splitAt(t, c, c.Nodes[0], "t/07")
	splitAt(t, c, c.Nodes[0], "t/13")
	waitRanges(t, c, 3)
	check("three ranges")
}
