package tests

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// coordinatorStall stops a write spanning ranges at one step of its
// coordinator, as if the coordinator had died there: the stalled call waits
// until the test ends.
type coordinatorStall struct {
	mu      sync.Mutex
	step    string // "held", "recorded" or "commit": where the next write stalls
	stalled chan struct{}
	release chan struct{}
}

func (s *coordinatorStall) at(step string) {
	s.mu.Lock()
	if s.step != step {
		s.mu.Unlock()
		return
	}
	s.step = ""
	s.mu.Unlock()
	close(s.stalled)
	<-s.release
}

// atSecondCommit returns a BeforeTxnCommit knob for one node: of each
// write the node coordinates over two ranges, the second range's commit
// stalls at step "commit" when armed.
func (s *coordinatorStall) atSecondCommit() func([]byte, uint64) {
	var mu sync.Mutex
	first := true
	return func([]byte, uint64) {
		mu.Lock()
		second := !first
		first = !first
		mu.Unlock()
		if second {
			s.at("commit")
		}
	}
}

func (s *coordinatorStall) arm(step string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.step, s.stalled = step, make(chan struct{})
}

// TestSpanningCoordinatorStalls: a write spanning two ranges whose
// coordinator stops after holding them, after recording its commit, or
// after committing on one range only. Readers wait on the held ranges
// rather than see half of it, and within seconds the ranges settle the
// write from its record — aborted when no commit was recorded, committed
// when one was; a watch opened before shows the write whole, in one
// response, or not at all.
func TestSpanningCoordinatorStalls(t *testing.T) {
	stall := &coordinatorStall{release: make(chan struct{})}
	c := testcluster.Start(t, 3, func(cfg *serverConfig) {
		cfg.Knobs.TxnSweepInterval = time.Second
		cfg.Knobs.AfterTxnHeld = func([]byte) { stall.at("held") }
		cfg.Knobs.AfterTxnRecorded = func([]byte) { stall.at("recorded") }
		cfg.Knobs.BeforeTxnCommit = stall.atSecondCommit()
	})
	// Before the cluster closes (cleanups run last first): the stalled
	// coordinators go on, and find their writes settled.
	t.Cleanup(func() { close(stall.release) })
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	if _, err := cli.Put(ctx, "a", "0"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "z", "0"); err != nil {
		t.Fatal(err)
	}
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	start, err := cli.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	watch := cli.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(start.Header.Revision+1))

	for i, tc := range []struct {
		step      string
		committed bool
	}{
		{"held", false},
		{"recorded", true},
		{"commit", true},
	} {
		value := string(rune('1' + i))
		stall.arm(tc.step)
		// The stalled coordinator's client gives up after a while; the
		// write's outcome is then unknown to it.
		wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		done := make(chan error, 1)
		go func() {
			_, err := c.Client(c.Nodes[0].ClientURL).Txn(wctx).Then(clientv3.OpPut("a", value), clientv3.OpPut("z", value)).Commit()
			done <- err
		}()
		select {
		case <-stall.stalled:
		case err := <-done:
			t.Fatalf("%s: the write ended before its coordinator stalled: %v", tc.step, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the coordinator never reached the step", tc.step)
		}
		// A linearizable read of both keys, through another node, waits for
		// the ranges to settle the write (their leaders do after 3 s), and
		// sees all of it or none of it.
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		get, err := c.Client(c.Nodes[1].ClientURL).Get(rctx, "", clientv3.WithFromKey())
		rcancel()
		if err != nil {
			t.Fatalf("%s: read: %v", tc.step, err)
		}
		want := string(rune('0' + i))
		if tc.committed {
			want = value
		}
		if len(get.Kvs) != 2 || string(get.Kvs[0].Value) != want || string(get.Kvs[1].Value) != want {
			t.Fatalf("%s: read %v, want both keys at %q", tc.step, get.Kvs, want)
		}
		cancel()
		<-done
		if !tc.committed {
			// Nothing changed; write the values the next case compares
			// against (both keys in one Txn).
			if _, err := cli.Txn(ctx).Then(clientv3.OpPut("a", value), clientv3.OpPut("z", value)).Commit(); err != nil {
				t.Fatalf("%s: write after the abort: %v", tc.step, err)
			}
		}
	}

	// Every write the watch shows, whole in one response.
	var seen [][]*mvccpb.Event
	deadline := time.After(10 * time.Second)
	for len(seen) < 3 {
		select {
		case resp := <-watch:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			if len(resp.Events) > 0 {
				seen = append(seen, resp.Events)
			}
		case <-deadline:
			t.Fatalf("the watch showed %d writes of 3", len(seen))
		}
	}
	for i, evs := range seen {
		want := string(rune('1' + i))
		if len(evs) != 2 || string(evs[0].Kv.Key) != "a" || string(evs[1].Kv.Key) != "z" ||
			string(evs[0].Kv.Value) != want || string(evs[1].Kv.Value) != want || evs[0].Kv.ModRevision != evs[1].Kv.ModRevision {
			t.Fatalf("watch response %d: %v, want a and z at %q at one revision", i, evs, want)
		}
	}
	// The records the stalled coordinators left go: the abort recorded
	// for the first write, and the commit of the third, which its
	// coordinator did not forget and one range did not report done with
	// (it applied the commit from the coordinator).
	deadline = time.After(10 * time.Second)
	for {
		all, aborted := c.Nodes[1].Server.Testing().TxnRecords()
		if all == 0 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("%d records of writes spanning ranges stayed in the meta range, %d of them aborts", all, aborted)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestEtcdctlSpanningWrites: etcdctl's del FROM TO, del --prefix and txn
// over keys of several ranges print, against Tessera split into four
// ranges, what they print against etcd v3.7.3.
func TestEtcdctlSpanningWrites(t *testing.T) {
	e := startEtcd(t)
	p := startProcess(t, t.TempDir())
	if _, err := etcdctl(t, p.clientURL, "", "del", "__ready"); err != nil { // waitReady's
		t.Fatal(err)
	}
	for _, key := range []string{"d", "n", "w"} {
		if _, err := runBinary(t, "tessera", "ctl", "--endpoints", p.clientURL, "split", key); err != nil {
			t.Fatalf("ctl split %s: %v", key, err)
		}
	}
	steps := []struct {
		stdin string
		args  []string
	}{
		{"", []string{"put", "a", "1"}},
		{"", []string{"put", "c", "1"}},
		{"", []string{"put", "m", "1"}},
		{"", []string{"put", "q", "1"}},
		{"", []string{"put", "x", "1"}},
		{"", []string{"put", "z", "1"}},
		{"value(\"a\") = \"1\"\nvalue(\"z\") = \"1\"\n\nput a 2\nput z 2\nget c\n\nput fail 1\n\n", []string{"txn"}},
		{"value(\"a\") = \"1\"\nvalue(\"q\") = \"1\"\n\nput a 3\n\nput fail q\nget m\n\n", []string{"txn"}},
		{"", []string{"get", "", "--from-key"}},
		{"", []string{"del", "b", "r", "--prev-kv"}},
		{"", []string{"get", "", "--from-key", "--keys-only"}},
		{"", []string{"del", "", "--prefix"}},
		{"", []string{"get", "", "--prefix"}},
	}
	for _, s := range steps {
		want, werr := etcdctl(t, "http://"+e.endpoint, s.stdin, s.args...)
		got, gerr := etcdctl(t, p.clientURL, s.stdin, s.args...)
		if (werr == nil) != (gerr == nil) || got != want {
			t.Fatalf("etcdctl %v:\netcd printed %q (%v)\nTessera printed %q (%v)", s.args, want, werr, got, gerr)
		}
	}
}

// TestLeaseAcrossRangesOneRevision: a lease with keys in five ranges, revoked
// and, another, expired: each time every key goes at one revision, in one
// watch response.
func TestLeaseAcrossRangesOneRevision(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	for _, key := range []string{"l/1", "l/2", "l/3", "l/4"} {
		splitAt(t, c, c.Nodes[0], key)
	}
	waitRanges(t, c, 5)
	keys := []string{"l/0", "l/1", "l/2", "l/3", "l/4"}
	watch := cli.Watch(ctx, "l/", clientv3.WithPrefix(), clientv3.WithFilterPut())
	for _, expire := range []bool{false, true} {
		ttl := int64(600)
		if expire {
			ttl = 3
		}
		lease, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(lease.ID)); err != nil {
				t.Fatal(err)
			}
		}
		var revoked int64
		if !expire {
			resp, err := cli.Revoke(ctx, lease.ID)
			if err != nil {
				t.Fatal(err)
			}
			revoked = resp.Header.Revision
		}
		select {
		case resp := <-watch:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			if len(resp.Events) != len(keys) {
				t.Fatalf("expired %t: one watch response has %d deletes, want %d: %v", expire, len(resp.Events), len(keys), resp.Events)
			}
			for i, ev := range resp.Events {
				if ev.Type != mvccpb.DELETE || string(ev.Kv.Key) != keys[i] || ev.Kv.ModRevision != resp.Events[0].Kv.ModRevision {
					t.Fatalf("expired %t: events %v, want the keys' deletes at one revision", expire, resp.Events)
				}
			}
			if !expire && resp.Events[0].Kv.ModRevision != revoked {
				t.Fatalf("deleted at %d, the revocation answered revision %d", resp.Events[0].Kv.ModRevision, revoked)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("expired %t: no deletes within 20 s", expire)
		}
		if get, err := cli.Get(ctx, "l/", clientv3.WithPrefix()); err != nil || get.Count != 0 {
			t.Fatalf("expired %t: keys left %v %v", expire, get, err)
		}
	}
}

// TestContendedSpanningWrites: 100 clients through three nodes, each sending
// Txns that put one key on each side of a range boundary, so that every
// write holds the same two ranges. Every write succeeds (those that meet
// another's hold wait their turn rather than run out of attempts), and
// each left both of its keys at one revision with one value.
func TestContendedSpanningWrites(t *testing.T) {
	c := testcluster.Start(t, 3)
	splitAt(t, c, c.Nodes[0], "s/m")
	waitRanges(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const clients, each = 100, 4
	errs := make(chan error, clients*each)
	var wg sync.WaitGroup
	for i := range clients {
		cli := c.Client(c.Nodes[i%3].ClientURL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				key, value := fmt.Sprintf("%02d", i), fmt.Sprint(j)
				_, err := cli.Txn(ctx).Then(clientv3.OpPut("s/a/"+key, value), clientv3.OpPut("s/z/"+key, value)).Commit()
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a write spanning two ranges failed: %v", err)
		}
	}
	get, err := c.Client(c.Nodes[0].ClientURL).Get(ctx, "s/", clientv3.WithPrefix())
	if err != nil || len(get.Kvs) != 2*clients {
		t.Fatalf("got %v %v, want %d keys", get, err, 2*clients)
	}
	for i, kv := range get.Kvs[:clients] {
		twin := get.Kvs[clients+i]
		if kv.ModRevision != twin.ModRevision || string(kv.Value) != fmt.Sprint(each-1) || string(twin.Value) != fmt.Sprint(each-1) {
			t.Errorf("%s = %s at %d, %s = %s at %d", kv.Key, kv.Value, kv.ModRevision, twin.Key, twin.Value, twin.ModRevision)
		}
	}
}

// TestWritesWaitingForAHold: a range held by a write spanning ranges whose
// coordinator stalls after holding, and more writes to it than the range
// takes proposals in flight. The writes wait for the hold to end without
// taking the slots its commit needs: once the coordinator goes on, the
// spanning write and every waiting write succeed.
func TestWritesWaitingForAHold(t *testing.T) {
	stall := &coordinatorStall{release: make(chan struct{})}
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.Knobs.RangeMaxInFlight = 4
		cfg.Knobs.AfterTxnHeld = func([]byte) { stall.at("held") }
	})
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	cli := c.Client(c.Nodes[0].ClientURL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stall.arm("held")
	spanning := make(chan error, 1)
	go func() {
		_, err := cli.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("z", "1")).Commit()
		spanning <- err
	}()
	select {
	case <-stall.stalled:
	case err := <-spanning:
		t.Fatalf("the spanning write ended before its coordinator stalled: %v", err)
	case <-ctx.Done():
		t.Fatal("the coordinator never held the ranges")
	}
	const waiting = 12
	errs := make(chan error, waiting)
	for i := range waiting {
		go func() {
			_, err := cli.Put(ctx, fmt.Sprintf("b%02d", i), "v")
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // the puts reach the held range and wait
	close(stall.release)
	if err := <-spanning; err != nil {
		t.Fatalf("the spanning write: %v", err)
	}
	for range waiting {
		if err := <-errs; err != nil {
			t.Fatalf("a write waiting for the hold: %v", err)
		}
	}
}

// TestSerializableReadsOfSpanningWrites: a write spanning two ranges whose
// coordinator stops after one range applied its commit. Until the other
// applies it, a serializable read of both ranges — on each node holding
// replicas of both, and on a node holding neither, in key order, sorted by
// value, and as a RangeStream — shows the write whole or not at all, though
// each replica's own read of its key shows what it applied. Once the
// coordinator goes on, every node shows all of it.
func TestSerializableReadsOfSpanningWrites(t *testing.T) {
	stall := &coordinatorStall{release: make(chan struct{})}
	c := testcluster.Start(t, 4, func(cfg *serverConfig) {
		cfg.PlacementInterval = -1 // the fourth node keeps no replica
		cfg.Knobs.HoldTimeout = time.Minute
		cfg.Knobs.BeforeTxnCommit = stall.atSecondCommit()
	})
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(stall.release) }) }
	t.Cleanup(release)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "0"); err != nil {
			t.Fatal(err)
		}
	}
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	if held := c.Nodes[3].Server.Testing().RangeCount(); held != 0 {
		t.Fatalf("the fourth node runs %d ranges, want none", held)
	}

	stall.arm("commit")
	done := make(chan error, 1)
	go func() {
		_, err := c.Client(c.Nodes[0].ClientURL).Txn(context.Background()).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("z", "1")).Commit()
		done <- err
	}()
	select {
	case <-stall.stalled:
	case err := <-done:
		t.Fatalf("the write ended before its coordinator stalled: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the coordinator never reached the commit")
	}

	// whole reads every key serializably through n, three ways, and fails
	// unless a and z have one value; it returns that value.
	whole := func(n *testcluster.Node) string {
		t.Helper()
		ncli := c.Client(n.ClientURL)
		var seen []string
		check := func(how string, kvs []*mvccpb.KeyValue) {
			t.Helper()
			if len(kvs) != 2 || string(kvs[0].Value) != string(kvs[1].Value) {
				t.Fatalf("%s: serializable read (%s) shows part of a write spanning ranges: %v", n.Config.Name, how, kvs)
			}
			seen = append(seen, string(kvs[0].Value))
		}
		get, err := ncli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		check("in key order", get.Kvs)
		sorted, err := ncli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortDescend))
		if err != nil {
			t.Fatal(err)
		}
		check("sorted by value", sorted.Kvs)
		check("stream", rangeStreamKVs(t, pbKV(ncli), &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Serializable: true}))
		return seen[len(seen)-1]
	}

	// Each node with replicas: once its replica of the range that applied
	// the commit shows it on its own, reads of both ranges still do not.
	for _, n := range c.Nodes[:3] {
		ncli := c.Client(n.ClientURL)
		deadline := time.Now().Add(10 * time.Second)
		for {
			shows := false
			for _, k := range []string{"a", "z"} {
				get, err := ncli.Get(ctx, k, clientv3.WithSerializable())
				if err != nil {
					t.Fatal(err)
				}
				shows = shows || string(get.Kvs[0].Value) == "1"
			}
			if shows {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no replica shows the commit one range applied", n.Config.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if v := whole(n); v != "0" {
			t.Fatalf("%s: serializable reads show the write before the second range applied it (%q)", n.Config.Name, v)
		}
	}
	// The node without replicas reads each range from its leader.
	if v := whole(c.Nodes[3]); v != "0" {
		t.Fatalf("node without replicas: serializable reads show the write before the second range applied it (%q)", v)
	}

	// The coordinator goes on: the write is applied whole, and every node
	// shows it.
	release()
	if err := <-done; err != nil {
		t.Fatalf("the write, let go on: %v", err)
	}
	for _, n := range c.Nodes {
		deadline := time.Now().Add(10 * time.Second)
		for whole(n) != "1" {
			if time.Now().After(deadline) {
				t.Fatalf("%s: serializable reads never showed the write", n.Config.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
