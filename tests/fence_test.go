package tests

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestFenceRaceAcrossRanges forces the race of docs/design.md, "Read fence", on a live
// node: a write to one range takes its revision W from the oracle and is held
// (a test hook) before it reaches its range; meanwhile a linearizable read
// over two ranges takes R > W and completes. The write, released, must end up
// with a revision above R, and reading at R again must show the same state:
// no write at or below R appears after a read at R.
func TestFenceRaceAcrossRanges(t *testing.T) {
	hold := newWriteHold(2)
	c := testcluster.Start(t, 1, func(cfg *serverConfig) { cfg.Knobs.AfterRevisionsTaken = hold.hook })
	ctx := ctxT(t)
	cli := c.Client()
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	// Both ranges have a leader that has applied its barrier.
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}

	hold.armed.Store(true)
	putDone := putAsync(ctx, cli, "a", "racing")
	hold.wait(t)
	// The write holds revision W. A read over both ranges now takes R >= W.
	readCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	read, err := cli.Get(readCtx, "", clientv3.WithFromKey())
	cancel()
	if err != nil {
		close(hold.release)
		t.Fatalf("the read waited for a write that had not reached its range: %v", err)
	}
	R, W := read.Header.Revision, hold.rev.Load()
	if R < W {
		close(hold.release)
		t.Fatalf("read revision %d below the held write's %d: the race was not forced", R, W)
	}
	close(hold.release)
	res := <-putDone
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.rev <= R {
		t.Fatalf("the write that took revision %d before the read at %d landed at %d, not above the read", W, R, res.rev)
	}
	again, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(R))
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Kvs) != len(read.Kvs) {
		t.Fatalf("state at %d changed after the read: %d keys, then %d", R, len(read.Kvs), len(again.Kvs))
	}
	for i := range read.Kvs {
		if string(read.Kvs[i].Value) != string(again.Kvs[i].Value) || read.Kvs[i].ModRevision != again.Kvs[i].ModRevision {
			t.Fatalf("state at %d changed after the read: %v, then %v", R, read.Kvs[i], again.Kvs[i])
		}
	}
	t.Logf("write took %d, read at %d, write landed at %d", W, R, res.rev)
}

// TestStaleLeaderWriteAfterTransfer forces the race of a leadership change
// with a write in flight: the range leader L takes a write's revision W and
// is held (a test hook) before it proposes; leadership moves to M, and a
// linearizable read through M takes R > W and completes. Released, L
// proposes as a follower now, and Raft forwards the proposal to M, which
// appends it after its own leadership barrier and after the read. The write
// must not land at W, nor anywhere at or below R: the state at R stays what
// the read saw.
func TestStaleLeaderWriteAfterTransfer(t *testing.T) {
	hold := newWriteHold(0)
	c := testcluster.Start(t, 3, func(cfg *serverConfig) {
		cfg.PlacementInterval = -1 // leadership moves only when the test says
		cfg.Knobs.AfterRevisionsTaken = hold.hook
	})
	ctx := ctxT(t)
	if _, err := c.Client(c.Nodes[0].ClientURL).Put(ctx, "k", "before"); err != nil {
		t.Fatal(err)
	}
	leader := -1
	for i, n := range c.Nodes {
		if n.Server.Testing().IsLeader() {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no node leads the data range after a write")
	}
	next := (leader + 1) % len(c.Nodes)

	hold.armed.Store(true)
	putDone := putAsync(ctx, c.Client(c.Nodes[leader].ClientURL), "k", "racing")
	hold.wait(t)
	// A transfer can be dropped (Dragonboat abandons one the target does
	// not complete within an election timeout): ask again until it moves.
	deadline := time.Now().Add(30 * time.Second)
	var asked time.Time
	for ; !c.Nodes[next].Server.Testing().IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(hold.release)
			t.Fatal("leadership did not move")
		}
		if time.Since(asked) > time.Second {
			_ = c.Nodes[leader].Server.Testing().TransferLeadership(uint64(next + 1))
			asked = time.Now()
		}
	}
	read, err := c.Client(c.Nodes[next].ClientURL).Get(ctx, "k")
	if err != nil {
		close(hold.release)
		t.Fatal(err)
	}
	R, W := read.Header.Revision, hold.rev.Load()
	if R < W || len(read.Kvs) != 1 || string(read.Kvs[0].Value) != "before" {
		close(hold.release)
		t.Fatalf("read at %d (held write at %d) saw %v: the race was not forced", R, W, read.Kvs)
	}
	close(hold.release)
	res := <-putDone
	if res.err == nil && res.rev <= R {
		t.Fatalf("the write that took revision %d under the old leader landed at %d, at or below the read at %d", W, res.rev, R)
	}
	again, err := c.Client(c.Nodes[next].ClientURL).Get(ctx, "k", clientv3.WithRev(R))
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Kvs) != 1 || again.Kvs[0].ModRevision != read.Kvs[0].ModRevision {
		t.Fatalf("state at %d changed after the read: %v, then %v", R, read.Kvs, again.Kvs)
	}
	t.Logf("write took %d under the old leader, read at %d, write answered %d (err %v)", W, R, res.rev, res.err)
}

// writeHold holds the first write that takes its revisions while armed, on
// range rangeID (0: any), until release is closed: install hook as
// serverConfig.Knobs.AfterRevisionsTaken.
type writeHold struct {
	rangeID uint64
	armed   atomic.Bool
	rev     atomic.Int64 // the held write's first revision
	held    chan struct{}
	release chan struct{}
	once    sync.Once
}

func newWriteHold(rangeID uint64) *writeHold {
	return &writeHold{rangeID: rangeID, held: make(chan struct{}, 1), release: make(chan struct{})}
}

func (w *writeHold) hook(rangeID uint64, first int64) {
	if !w.armed.Load() || (w.rangeID != 0 && rangeID != w.rangeID) {
		return
	}
	w.once.Do(func() {
		w.rev.Store(first)
		w.held <- struct{}{}
		<-w.release
	})
}

// wait returns once a write is held.
func (w *writeHold) wait(t *testing.T) {
	t.Helper()
	select {
	case <-w.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the write never took its revision")
	}
}

type putResult struct {
	rev int64
	err error
}

// putAsync puts key in the background; the channel gets its outcome.
func putAsync(ctx context.Context, cli *clientv3.Client, key, value string) <-chan putResult {
	done := make(chan putResult, 1)
	go func() {
		resp, err := cli.Put(ctx, key, value)
		if err != nil {
			done <- putResult{err: err}
			return
		}
		done <- putResult{rev: resp.Header.Revision}
	}()
	return done
}

// TestInDoubtWriteHoldsFencedReads: a write whose proposal timed out may
// still be applied, so its place in the fence is kept until a barrier
// proposed after it has applied, however many barriers time out first. The
// range's applies are held back (a test hook) while a write is proposed:
// the write's proposal times out, then the barriers proposed behind it do
// too; a linearizable read issued meanwhile must not complete on the state
// without the write and then see the write land at or below its revision.
func TestInDoubtWriteHoldsFencedReads(t *testing.T) {
	const requestTimeout = 300 * time.Millisecond
	gate := newApplyGate(2)
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.Knobs.BeforeApply = gate.hook
		cfg.Knobs.RangeRequestTimeout = requestTimeout
	})
	ctx := ctxT(t)
	cli := c.Client()
	// The short proposal timeout applies to every write of the range: on a
	// loaded machine this first one may time out and is asked again.
	for attempt := 1; ; attempt++ {
		_, err := cli.Put(ctx, "k", "before")
		if err == nil {
			break
		}
		if attempt == 10 {
			t.Fatal(err)
		}
	}

	gate.shut()
	putDone := putAsync(ctx, cli, "k", "in doubt")
	gate.waitHeld(t)
	// The write's proposal times out, then at least one barrier behind it.
	time.Sleep(4 * requestTimeout)
	readDone := make(chan *clientv3.GetResponse, 1)
	readErr := make(chan error, 1)
	go func() {
		resp, err := cli.Get(ctx, "k")
		if err != nil {
			readErr <- err
			return
		}
		readDone <- resp
	}()
	// Time for a read that did not wait to complete on the held state.
	time.Sleep(4 * requestTimeout)
	gate.open()

	var read *clientv3.GetResponse
	select {
	case read = <-readDone:
	case err := <-readErr:
		t.Fatal(err)
	}
	res := <-putDone
	final, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	R, got := read.Header.Revision, string(read.Kvs[0].Value)
	w := final.Kvs[0]
	t.Logf("read at %d saw %q; the write (answer: rev %d, err %v) is %q at %d", R, got, res.rev, res.err, w.Value, w.ModRevision)
	if string(w.Value) == "in doubt" && w.ModRevision <= R && got != "in doubt" {
		t.Fatalf("a read at %d saw %q, and then the write it did not see appeared at %d", R, got, w.ModRevision)
	}
	if res.err == nil {
		t.Fatalf("the write was answered (revision %d) while the range's applies were held: its proposal did not time out", res.rev)
	}
}

// applyGate holds back the applies of range rangeID while shut: install
// hook as serverConfig.Knobs.BeforeApply.
type applyGate struct {
	rangeID uint64
	mu      sync.Mutex
	gate    chan struct{} // nil while open
	held    chan struct{}
}

func newApplyGate(rangeID uint64) *applyGate {
	return &applyGate{rangeID: rangeID, held: make(chan struct{}, 1)}
}

func (g *applyGate) hook(rangeID uint64) {
	if rangeID != g.rangeID {
		return
	}
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate == nil {
		return
	}
	select {
	case g.held <- struct{}{}:
	default:
	}
	<-gate
}

func (g *applyGate) shut() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *applyGate) open() {
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
}

// waitHeld returns once an apply is held.
func (g *applyGate) waitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-g.held:
	case <-time.After(10 * time.Second):
		g.open()
		t.Fatal("no apply reached the gate")
	}
}
