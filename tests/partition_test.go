package tests

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/faultproxy"
	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// behindProxies puts every node behind the network's proxies: it listens
// where testcluster put it, advertises addresses of the network's (its
// peers in --initial-cluster too), and opens every connection to another
// node with the network's dialer (server.TestingKnobs.DialNode).
func behindProxies(t *testing.T, network *faultproxy.Network) testcluster.Options {
	return func(cfg *serverConfig) {
		advertise := func(node, url string) string {
			addr, err := network.Advertise(node, strings.TrimPrefix(url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			return "http://" + addr
		}
		members := slices.Clone(cfg.InitialCluster)
		for i, m := range members {
			members[i].PeerURL = advertise(m.Name, m.PeerURL)
		}
		cfg.InitialCluster = members
		cfg.InitialAdvertisePeerURLs = []string{advertise(cfg.Name, cfg.InitialAdvertisePeerURLs[0])}
		cfg.AdvertiseClientURLs = []string{advertise(cfg.Name, cfg.AdvertiseClientURLs[0])}
		cfg.Knobs.DialNode = network.Dialer(cfg.Name)
	}
}

// partitionOp is one operation of TestPartition's clients, with the node it
// went to and whether it succeeded.
type partitionOp struct {
	porcupine.Operation
	node         int
	ok           bool
	serializable bool
	rev          int64 // the response header's revision
	// returned is when the call returned (Return is past every call for a
	// write whose outcome is unknown, as porcupine needs it).
	returned int64
}

// TestPartition: five nodes, three replicas per range, and every connection
// between two nodes through a proxy of its link (internal/faultproxy). Each
// node listens on ports of its own and advertises others, where only a
// relay that counts its connections listens; it opens every connection to
// another node — Raft's, the Internal service's (forwarded requests, feeds,
// the revision oracle) — with server.TestingKnobs.DialNode, which sends it
// through the proxy of the link (caller, callee). A partition stops those
// proxies both ways (bytes held, new connections hang) while the test's
// clients reach every node's own port directly; no connection may reach an
// advertised address around the proxies. Node 1 leads the meta range and two of the four data ranges, follows in
// a third and holds no replica of the fourth. Clients on every node put,
// get and compare-and-swap while node 1 is cut off from the other four for
// a few seconds, then healed.
//
// During the partition node 1 must answer no linearizable request (as an
// etcd member cut off from its quorum: it refuses or times out), while the
// four others serve reads and writes of every range. Serializable reads on
// node 1 may be stale, as etcd's are, and stay out of the history. After
// healing every node serves again; porcupine checks the whole history
// (final reads through every node included), and every acknowledged write
// reads back at its revision.
func TestPartition(t *testing.T) {
	network := faultproxy.New()
	t.Cleanup(network.Close) // after the cluster's cleanup, which is registered later
	c := testcluster.Start(t, 5, behindProxies(t, network))
	minority := c.Nodes[0]
	ranges := arrangePartitionRanges(t, c)
	t.Logf("ranges before the partition: %s", describeRangeInfos(ranges))

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }
	const (
		keys         = 16
		partitionFor = 6 * time.Second
	)
	key := func(i int) string { return fmt.Sprintf("part/%02d", i) }

	var (
		mu      sync.Mutex
		ops     []partitionOp
		stopped atomic.Bool
		wg      sync.WaitGroup
	)
	// Four clients on the node to be cut off, two on each other node.
	clientNodes := []int{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4}
	for id, node := range clientNodes {
		cli := c.Client(c.Nodes[node].ClientURL)
		rng := rand.New(rand.NewSource(seed + int64(id)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			lastRev := int64(0)
			for i := 0; !stopped.Load(); i++ {
				in := kvInput{key: key(rng.Intn(keys))}
				serializable := false
				switch r := rng.Intn(10); {
				case r < 4:
					in.op = "get"
					serializable = node == 0 && r == 0
				case r < 7:
					in.op, in.value = "put", fmt.Sprintf("c%d-%d", id, i)
				default:
					in.op, in.value = "cas", fmt.Sprintf("c%d-%d", id, i)
					in.expected = lastValue(&mu, &ops, in.key)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
				call := now()
				out, rev, err := doKVOp(ctx, cli, in, serializable)
				ret := now()
				cancel()
				op := partitionOp{node: node, ok: err == nil, serializable: serializable, rev: rev, returned: ret,
					Operation: porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret}}
				if err != nil && in.op != "get" {
					op.Output, op.Return = kvOutput{unknown: true}, math.MaxInt64
				}
				if err == nil && !serializable {
					if rev < lastRev {
						t.Errorf("client %d on %s: header revision went back from %d to %d", id, c.Nodes[node].Config.Name, lastRev, rev)
					}
					lastRev = rev
				}
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
		}()
	}

	time.Sleep(1500 * time.Millisecond)
	var others []string
	for _, n := range c.Nodes[1:] {
		others = append(others, n.Config.Name)
	}
	network.Partition([]string{minority.Config.Name}, others)
	cutAt := now()
	time.Sleep(partitionFor)
	healedAt := now()
	network.Heal()
	time.Sleep(3 * time.Second)
	stopped.Store(true)
	wg.Wait()

	// Inside the partition: from after the cut to before the heal.
	var minorityRefused, serializableServed int
	majorityReads, majorityWrites := map[string]int{}, map[string]int{}
	for _, op := range ops {
		if op.Call < cutAt || op.returned > healedAt {
			continue
		}
		in, name := op.Input.(kvInput), c.Nodes[op.node].Config.Name
		switch {
		case op.node == 0 && op.serializable:
			if op.ok {
				serializableServed++
			}
		case op.node == 0 && op.ok:
			t.Errorf("%s answered a linearizable request during the partition: %s", name, registerModel.DescribeOperation(op.Input, op.Output))
		case op.node == 0:
			minorityRefused++
		case op.ok && in.op == "get":
			majorityReads[name]++
		case op.ok:
			majorityWrites[name]++
		}
	}
	t.Logf("during the %v partition: the majority served reads %v and writes %v; %s refused or timed out %d linearizable requests and served %d serializable reads",
		partitionFor, majorityReads, majorityWrites, minority.Config.Name, minorityRefused, serializableServed)
	if len(majorityReads) == 0 || len(majorityWrites) == 0 {
		t.Errorf("the majority side served no reads or no writes during the partition")
	}
	if minorityRefused == 0 {
		t.Errorf("no linearizable request to %s fell inside the partition", minority.Config.Name)
	}

	// Healed, every node serves again; a linearizable read of every key
	// through every node ends the history.
	history := make([]porcupine.Operation, 0, len(ops)+keys*len(c.Nodes))
	for _, op := range ops {
		if op.serializable || (!op.ok && op.Input.(kvInput).op == "get") {
			continue // a failed read has no effect
		}
		history = append(history, op.Operation)
	}
	ctx := ctxT(t)
	for i, n := range c.Nodes {
		cli := c.Client(n.ClientURL)
		waitServing(t, cli, n.Config.Name)
		for k := range keys {
			in := kvInput{op: "get", key: key(k)}
			call := now()
			out, _, err := doKVOp(ctx, cli, in, false)
			if err != nil {
				t.Fatalf("%s after healing: get %s: %v", n.Config.Name, in.key, err)
			}
			history = append(history, porcupine.Operation{ClientId: len(clientNodes) + i, Input: in, Call: call, Output: out, Return: now()})
		}
	}
	requireLinearizable(t, history, seed)
	requireWritesAtRevisions(t, c, ops)
	if n := network.Bypasses(); n != 0 {
		t.Fatalf("%d connections between nodes went around the proxies", n)
	}
}

// arrangePartitionRanges splits the keyspace into four ranges and arranges
// them for TestPartition: node 1 leads the meta range and the first two
// ranges, follows in the fourth (led by node 5) and holds no replica of the
// third. It returns the ranges with their leaders.
func arrangePartitionRanges(t *testing.T, c *testcluster.Cluster) []*tesserapb.RangeInfo {
	t.Helper()
	ctx := ctxT(t)
	for _, key := range []string{"part/04", "part/08", "part/12"} {
		splitAt(t, c, c.Nodes[0], key)
	}
	waitRanges(t, c, 4)
	ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ranges) != 4 {
		t.Fatalf("%d ranges after three splits: %s", len(ranges), describeRangeInfos(ranges))
	}
	third, fourth := ranges[2].RangeId, ranges[3].RangeId
	moveReplica(t, c.Nodes[1], third, 1, 4)
	moveReplica(t, c.Nodes[1], fourth, 2, 5)
	waitHeld(t, c.Nodes[3], third)
	waitHeld(t, c.Nodes[4], fourth)
	want := map[uint64]uint64{ranges[0].RangeId: 1, ranges[1].RangeId: 1, fourth: 5}
	deadline := time.Now().Add(20 * time.Second)
	for {
		settled := c.Nodes[1].Server.Testing().MetaLeader() == 1
		if !settled {
			_ = c.Nodes[0].Server.Testing().TransferMetaLeadership(1)
		}
		ranges = heldRanges(t, c)
		for _, r := range ranges {
			if node, ok := want[r.RangeId]; ok && r.LeaderNodeId != node {
				settled = false
				_ = c.Nodes[node-1].Server.Testing().TransferRangeLeadership(r.RangeId, node)
			}
		}
		if settled {
			return ranges
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaders not where asked within 20s: meta on node %d; %s", c.Nodes[1].Server.Testing().MetaLeader(), describeRangeInfos(ranges))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// moveReplica moves a range's replica from one node to another through a
// node. An Unavailable answer (its leader did not move off the node losing
// its replica in time) is retried, as an operator would.
func moveReplica(t *testing.T, via *testcluster.Node, rangeID, from, to uint64) {
	t.Helper()
	var err error
	for range 5 {
		if _, err = via.Server.Testing().ChangeReplicas(ctxT(t), rangeID, to, from); status.Code(err) != codes.Unavailable {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("moving range %d from node %d to node %d: %v", rangeID, from, to, err)
	}
}

// heldRanges returns the ranges in key order, each as the first node holding
// a replica of it reports it (with its leader).
func heldRanges(t *testing.T, c *testcluster.Cluster) []*tesserapb.RangeInfo {
	t.Helper()
	byID := map[uint64]*tesserapb.RangeInfo{}
	var out []*tesserapb.RangeInfo
	for i, n := range c.Nodes {
		ranges, err := n.Server.Testing().Ranges(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ranges {
			if _, seen := byID[r.RangeId]; !seen && slices.Contains(r.ReplicaNodeIds, uint64(i+1)) {
				byID[r.RangeId] = r
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b *tesserapb.RangeInfo) int { return bytes.Compare(a.StartKey, b.StartKey) })
	return out
}

func describeRangeInfos(ranges []*tesserapb.RangeInfo) string {
	var b strings.Builder
	for _, r := range ranges {
		fmt.Fprintf(&b, "range %d [%q, %q) replicas %v leader %d; ", r.RangeId, r.StartKey, r.EndKey, r.ReplicaNodeIds, r.LeaderNodeId)
	}
	return b.String()
}

// doKVOp performs one operation of the register model through cli.
func doKVOp(ctx context.Context, cli *clientv3.Client, in kvInput, serializable bool) (out kvOutput, rev int64, err error) {
	switch in.op {
	case "get":
		var opts []clientv3.OpOption
		if serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
		resp, err := cli.Get(ctx, in.key, opts...)
		if err != nil {
			return out, 0, err
		}
		if len(resp.Kvs) > 0 {
			out.value = string(resp.Kvs[0].Value)
		}
		return out, resp.Header.Revision, nil
	case "put":
		resp, err := cli.Put(ctx, in.key, in.value)
		if err != nil {
			return out, 0, err
		}
		return out, resp.Header.Revision, nil
	case "cas":
		cmp := clientv3.Compare(clientv3.Value(in.key), "=", in.expected)
		if in.expected == "" {
			cmp = clientv3.Compare(clientv3.CreateRevision(in.key), "=", 0)
		}
		resp, err := cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(in.key, in.value)).Commit()
		if err != nil {
			return out, 0, err
		}
		out.ok = resp.Succeeded
		return out, resp.Header.Revision, nil
	}
	return out, 0, fmt.Errorf("unknown operation %q", in.op)
}

// lastValue is the value of key in the latest successful linearizable
// operation recorded, so that some compare-and-swaps succeed.
func lastValue(mu *sync.Mutex, recorded *[]partitionOp, key string) string {
	mu.Lock()
	defer mu.Unlock()
	ops := *recorded
	for i := len(ops) - 1; i >= 0; i-- {
		in, out := ops[i].Input.(kvInput), ops[i].Output.(kvOutput)
		if in.key != key || !ops[i].ok || ops[i].serializable {
			continue
		}
		switch {
		case in.op == "get":
			return out.value
		case in.op == "put", in.op == "cas" && out.ok:
			return in.value
		}
	}
	return ""
}

// waitServing waits, up to 20s, until a linearizable read through cli
// succeeds.
func waitServing(t *testing.T, cli *clientv3.Client, who string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "part/")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s serves no linearizable read 20s after healing: %v", who, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireWritesAtRevisions reads every acknowledged write back at its
// revision, through the nodes in turn.
func requireWritesAtRevisions(t *testing.T, c *testcluster.Cluster, ops []partitionOp) {
	t.Helper()
	var clis []*clientv3.Client
	for _, n := range c.Nodes {
		clis = append(clis, c.Client(n.ClientURL))
	}
	ctx := ctxT(t)
	acked := 0
	for _, op := range ops {
		in, out := op.Input.(kvInput), op.Output.(kvOutput)
		if !op.ok || (in.op != "put" && !(in.op == "cas" && out.ok)) {
			continue
		}
		rev := op.rev
		resp, err := clis[acked%len(clis)].Get(ctx, in.key, clientv3.WithRev(rev))
		if err != nil {
			t.Fatalf("reading %s at revision %d: %v", in.key, rev, err)
		}
		if len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != rev || string(resp.Kvs[0].Value) != in.value {
			t.Fatalf("acknowledged %s=%s at revision %d reads back as %v", in.key, in.value, rev, resp.Kvs)
		}
		acked++
	}
	t.Logf("%d acknowledged writes read back at their revisions", acked)
}
