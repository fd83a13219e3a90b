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
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	c := testcluster.Start(t, 3)
	const (
		clients      = 8
		opsPerClient = 250
		keys         = 4
	)
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }

	var (
		mu      sync.Mutex
		history []porcupine.Operation
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
				key := fmt.Sprintf("lin/%d", rng.Intn(keys))
				in := kvInput{key: key, value: fmt.Sprintf("c%d-%d", id, i)}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := now()
				var (
					out kvOutput
					rev int64
					err error
				)
				switch r := rng.Intn(10); {
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
				mu.Unlock()
			}
		}()
	}
	// Disturb leadership while the clients run.
	for round := range 3 {
		time.Sleep(300 * time.Millisecond)
		leader := c.Leader()
		if round == 1 {
			c.StopNode(leader)
			time.Sleep(time.Second)
			c.StartNode(leader)
			continue
		}
		target := uint64((round+1)%3 + 1)
		_ = leader.Server.TransferLeadership(target)
	}
	wg.Wait()

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
