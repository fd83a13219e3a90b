package tests

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// kvInput is one client operation on a single key.
type kvInput struct {
	op       string // "get", "put" or "cas"
	key      string
	value    string // put/cas: the new value
	expected string // cas: the value compared with
}

// kvOutput is what the client saw. unknown: the write's outcome is unknown (an
// error); it may have taken effect at any point after its call.
type kvOutput struct {
	value   string // get
	ok      bool   // cas: the compare held
	unknown bool
}

// registerModel is a map of registers, checked per key.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, seen := byKey[k]; !seen {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		cur, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.op {
		case "get":
			return out.value == cur, cur
		case "put":
			return true, in.value
		case "cas":
			holds := cur == in.expected
			if out.unknown {
				if holds {
					return true, in.value
				}
				return true, cur
			}
			if out.ok != holds {
				return false, cur
			}
			if holds {
				return true, in.value
			}
			return true, cur
		}
		return false, cur
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(kvInput), output.(kvOutput)
		return fmt.Sprintf("%s(%s, %q, %q) -> %+v", in.op, in.key, in.value, in.expected, out)
	},
}

// TestLinearizable: concurrent clients doing Put, Get and compare-and-swap Txn
// through every node of a 3-node cluster, while leadership moves and the
// leader is restarted; porcupine checks the history, and every client must see
// revisions that never go backwards.
func TestLinearizable(t *testing.T) {
	c := testcluster.Start(t, 3)
	runLinearizability(t, c, 4, false, func(round int) {
		leader := c.Leader()
		if round == 1 {
			c.StopNode(leader)
			time.Sleep(time.Second)
			c.StartNode(leader)
			return
		}
		_ = leader.Server.Testing().TransferLeadership(uint64((round+1)%3 + 1))
	})
}

// TestLinearizableManyRanges: the same over 8 ranges and more made by splits
// during the run, with leader transfers, plus multi-range lists: each list must
// be exactly the state at its header revision on every range.
func TestLinearizableManyRanges(t *testing.T) { linearizableManyRanges(t, 3) }

// TestLinearizableWithoutReplicas: the same on four nodes with three
// replicas per range, a quarter of the clients on the fourth node, which
// holds no replica and sends every request to the nodes that do.
func TestLinearizableWithoutReplicas(t *testing.T) { linearizableManyRanges(t, 4) }

func linearizableManyRanges(t *testing.T, nodes int) {
	c := testcluster.Start(t, nodes)
	for i, key := range []string{"lin/02", "lin/04", "lin/06", "lin/08", "lin/10", "lin/12", "lin/14"} {
		splitAt(t, c, c.Nodes[i%3], key)
	}
	waitRanges(t, c, 8)
	runLinearizability(t, c, 16, true, func(round int) {
		switch round {
		case 0:
			splitAt(t, c, c.Nodes[1], "lin/01")
		case 1:
			_ = c.Nodes[0].Server.Testing().TransferLeadership(2)
		case 2:
			splitAt(t, c, c.Nodes[2], "lin/09")
			_ = c.Nodes[0].Server.Testing().TransferMetaLeadership(3)
		}
	})
}

// TestLinearizableOneNode: the same on one node, where every range has a
// sole replica and linearizable reads skip the ReadIndex round (the fence
// and the leadership barrier alone make them linearizable), over ranges
// that split during the run.
func TestLinearizableOneNode(t *testing.T) {
	c := testcluster.Start(t, 1)
	for _, key := range []string{"lin/04", "lin/08", "lin/12"} {
		splitAt(t, c, c.Nodes[0], key)
	}
	runLinearizability(t, c, 16, true, func(round int) {
		splitAt(t, c, c.Nodes[0], fmt.Sprintf("lin/%02d", 2*round+1))
	})
}

// listResult is a multi-range list seen by a client, checked against the
// writes' own responses.
type listResult struct {
	rev int64
	kvs map[string]*mvccpb.KeyValue
}

// The load of runLinearizability.
const (
	linClients      = 8
	linOpsPerClient = 250
)

// writeRecord is a write whose revision the client saw (acknowledged).
type writeRecord struct {
	key, value string
	rev        int64
}

func runLinearizability(t *testing.T, c *testcluster.Cluster, keys int, lists bool, disturb func(round int)) {
	finish := startLinearizability(t, c, keys, lists)
	for round := range 3 {
		time.Sleep(300 * time.Millisecond)
		disturb(round)
	}
	finish()
}

// startLinearizability starts runLinearizability's clients on the cluster's
// nodes and returns a function, for the test's goroutine, that waits for
// them to finish their operations and checks the history.
func startLinearizability(t *testing.T, c *testcluster.Cluster, keys int, lists bool) (finish func()) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	const clients, opsPerClient = linClients, linOpsPerClient
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }

	var (
		mu      sync.Mutex
		history []porcupine.Operation
		listed  []listResult
		writes  []writeRecord
		wg      sync.WaitGroup
	)
	for id := range clients {
		cli := c.Client(c.Nodes[id%len(c.Nodes)].ClientURL)
		rng := rand.New(rand.NewSource(seed + int64(id)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			lastRev := int64(0)
			for i := range opsPerClient {
				key := fmt.Sprintf("lin/%02d", rng.Intn(keys))
				in := kvInput{key: key, value: fmt.Sprintf("c%d-%d", id, i)}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := now()
				var (
					out kvOutput
					rev int64
					err error
				)
				switch r := rng.Intn(10); {
				case lists && r == 0:
					var resp *clientv3.GetResponse
					if resp, err = cli.Get(ctx, "lin/", clientv3.WithPrefix()); err == nil {
						res := listResult{rev: resp.Header.Revision, kvs: map[string]*mvccpb.KeyValue{}}
						for _, kv := range resp.Kvs {
							res.kvs[string(kv.Key)] = kv
						}
						mu.Lock()
						listed = append(listed, res)
						mu.Unlock()
						if resp.Header.Revision < lastRev {
							t.Errorf("client %d: list revision went back from %d to %d", id, lastRev, resp.Header.Revision)
						}
						lastRev = resp.Header.Revision
					}
					cancel()
					continue
				case r < 4:
					in.op = "get"
					var resp *clientv3.GetResponse
					if resp, err = cli.Get(ctx, key); err == nil {
						rev = resp.Header.Revision
						if len(resp.Kvs) > 0 {
							out.value = string(resp.Kvs[0].Value)
						}
					}
				case r < 7:
					in.op = "put"
					var resp *clientv3.PutResponse
					if resp, err = cli.Put(ctx, key, in.value); err == nil {
						rev = resp.Header.Revision
					}
				default:
					in.op = "cas"
					in.expected = fmt.Sprintf("c%d-%d", rng.Intn(clients), rng.Intn(i+1))
					if rng.Intn(3) == 0 {
						in.expected = lastValueSeen(&mu, &history, key)
					}
					cmp := clientv3.Compare(clientv3.Value(key), "=", in.expected)
					if in.expected == "" {
						cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
					}
					var resp *clientv3.TxnResponse
					if resp, err = cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, in.value)).Commit(); err == nil {
						rev = resp.Header.Revision
						out.ok = resp.Succeeded
					}
				}
				ret := now()
				cancel()
				if err != nil {
					if in.op == "get" {
						continue // a failed read has no effect
					}
					out.unknown = true
					ret = math.MaxInt64
				} else {
					if rev < lastRev {
						t.Errorf("client %d: header revision went back from %d to %d", id, lastRev, rev)
					}
					lastRev = rev
				}
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
				if !out.unknown && (in.op == "put" || (in.op == "cas" && out.ok)) {
					writes = append(writes, writeRecord{key: key, value: in.value, rev: rev})
				}
				mu.Unlock()
			}
		}()
	}
	return func() {
		wg.Wait()
		checkLinearizability(t, history, listed, writes, seed, lists)
	}
}

// checkLinearizability checks runLinearizability's history with porcupine,
// and its lists against the acknowledged writes.
func checkLinearizability(t *testing.T, history []porcupine.Operation, listed []listResult, writes []writeRecord, seed int64, lists bool) {
	t.Helper()
	const clients, opsPerClient = linClients, linOpsPerClient
	requireLinearizable(t, history, seed)
	if lists {
		t.Logf("%d lists", len(listed))
	}
	// Failed reads are left out of the history; a store that failed most of
	// them would pass vacuously.
	if len(history) < clients*opsPerClient*6/10 || (lists && len(listed) < clients*opsPerClient/20) {
		t.Fatalf("too few operations succeeded to judge: %d of %d, %d lists", len(history), clients*opsPerClient, len(listed))
	}
	checkLists(t, listed, writes)
}

// requireLinearizable checks a history of the register model with
// porcupine, leaving a visualisation of a failure in the test's directory.
func requireLinearizable(t *testing.T, history []porcupine.Operation, seed int64) {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 60*time.Second)
	if res == porcupine.Illegal {
		path := t.TempDir() + "/linearizability.html"
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			t.Logf("visualisation in %s", path)
		}
		t.Fatalf("history of %d operations is not linearizable (seed %d)", len(history), seed)
	}
	t.Logf("%d operations checked: %s", len(history), res)
}

// checkLists: a list at revision R must show, for every key, the acknowledged
// write with the highest revision <= R (or a write at least that new whose
// acknowledgement was lost), and nothing written after R.
func checkLists(t *testing.T, listed []listResult, writes []writeRecord) {
	t.Helper()
	for _, l := range listed {
		newest := map[string]writeRecord{}
		for _, w := range writes {
			if w.rev <= l.rev && w.rev > newest[w.key].rev {
				newest[w.key] = w
			}
		}
		for key, w := range newest {
			kv, ok := l.kvs[key]
			if !ok || kv.ModRevision < w.rev {
				t.Fatalf("list at revision %d misses %s=%s written at %d (saw %v)", l.rev, key, w.value, w.rev, kv)
			}
			if kv.ModRevision == w.rev && string(kv.Value) != w.value {
				t.Fatalf("list at revision %d: %s=%q at %d, but the write at %d was %q", l.rev, key, kv.Value, kv.ModRevision, w.rev, w.value)
			}
		}
		for key, kv := range l.kvs {
			if kv.ModRevision > l.rev {
				t.Fatalf("list at revision %d shows %s written later, at %d", l.rev, key, kv.ModRevision)
			}
		}
	}
}

// lastValueSeen returns the value of key in the latest recorded successful
// operation, so some compare-and-swaps are likely to succeed.
func lastValueSeen(mu *sync.Mutex, history *[]porcupine.Operation, key string) string {
	mu.Lock()
	defer mu.Unlock()
	h := *history
	for i := len(h) - 1; i >= 0; i-- {
		in, out := h[i].Input.(kvInput), h[i].Output.(kvOutput)
		if in.key != key || out.unknown {
			continue
		}
		switch in.op {
		case "get":
			return out.value
		case "put":
			return in.value
		}
	}
	return ""
}

// TestRegisterModelRejectsStaleRead: the model the checker uses refuses a read
// that misses a write completed before it began, so TestLinearizable can fail.
func TestRegisterModelRejectsStaleRead(t *testing.T) {
	history := []porcupine.Operation{
		{ClientId: 0, Input: kvInput{op: "put", key: "x", value: "a"}, Call: 0, Output: kvOutput{}, Return: 10},
		{ClientId: 1, Input: kvInput{op: "get", key: "x"}, Call: 20, Output: kvOutput{value: ""}, Return: 30},
	}
	if porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a stale read was accepted as linearizable")
	}
	history[1].Output = kvOutput{value: "a"}
	history = append(history, porcupine.Operation{ClientId: 2, Input: kvInput{op: "cas", key: "x", value: "b", expected: "z"}, Call: 40, Output: kvOutput{ok: true}, Return: 50})
	if porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a compare-and-swap that succeeded on a wrong value was accepted")
	}
}
