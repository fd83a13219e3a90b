package meta

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// fakeMeta is an in-memory meta range replica whose leadership the test
// controls; it is for testing the allocator's rules, not Raft.
type fakeMeta struct {
	mu       sync.Mutex
	nodeID   uint64
	leader   uint64
	term     uint64
	state    *tesserapb.MetaState
	failRead bool
	// onConfirm runs at each linearizable read (the leadership check).
	onConfirm func()
}

func (f *fakeMeta) NodeID() uint64 { return f.nodeID }
func (f *fakeMeta) Sole() bool     { return false }
func (f *fakeMeta) Leader() (uint64, uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader, f.term, f.leader != 0
}
func (f *fakeMeta) Propose(_ context.Context, cmd *tesserapb.MetaCommand) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	applyMeta(f.state, cmd)
	return nil
}
func (f *fakeMeta) Read(_ context.Context, linearizable bool, fn func(*tesserapb.MetaState) (any, error)) (any, error) {
	if linearizable && f.onConfirm != nil {
		f.onConfirm()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if linearizable && f.failRead {
		return nil, errors.New("read index failed")
	}
	return fn(f.state)
}

func (f *fakeMeta) ConfirmLeader(ctx context.Context) error {
	_, err := f.Read(ctx, true, func(*tesserapb.MetaState) (any, error) { return nil, nil })
	return err
}

// newStopper returns a stopper that the test stops when it ends.
func newStopper(t *testing.T) *stop.Stopper {
	s := stop.New()
	t.Cleanup(s.Stop)
	return s
}

func newFake(nodeID uint64) *fakeMeta {
	return &fakeMeta{nodeID: nodeID, leader: nodeID, term: 1, state: &tesserapb.MetaState{HighWater: InitialHighWater}}
}

func TestAllocatorIncreasingAndPersisted(t *testing.T) {
	ctx := context.Background()
	f := newFake(1)
	a := NewAllocator(f, newStopper(t), 0)
	first, err := a.Allocate(ctx, 3)
	if err != nil || first != InitialHighWater {
		t.Fatalf("first allocation = %d, %v; want %d", first, err, InitialHighWater)
	}
	second, err := a.Allocate(ctx, 1)
	if err != nil || second != first+3 {
		t.Fatalf("second allocation = %d, %v; want %d", second, err, first+3)
	}
	if f.state.HighWater <= second {
		t.Fatalf("high-water %d not above handed-out %d", f.state.HighWater, second)
	}
}

func TestAllocatorNewLeaderStartsAboveEverything(t *testing.T) {
	ctx := context.Background()
	f1 := newFake(1)
	a1 := NewAllocator(f1, newStopper(t), 0)
	last, _ := a1.Allocate(ctx, 10)
	last += 9
	// Node 2 takes over with the same replicated state in a later term.
	f2 := &fakeMeta{nodeID: 2, leader: 2, term: 2, state: proto.CloneOf(f1.state)}
	a2 := NewAllocator(f2, newStopper(t), 0)
	got, err := a2.Allocate(ctx, 1)
	if err != nil || got <= last {
		t.Fatalf("new leader's first revision = %d, %v; want above %d", got, err, last)
	}
	// The old leader, deposed, hands out nothing.
	f1.mu.Lock()
	f1.leader, f1.term = 2, 2
	f1.mu.Unlock()
	var nl *NotLeaderError
	if _, err := a1.Allocate(ctx, 1); !errors.As(err, &nl) || nl.LeaderNodeID != 2 {
		t.Fatalf("deposed leader allocated: %v", err)
	}
}

func TestAllocatorDeposedDuringConfirmation(t *testing.T) {
	ctx := context.Background()
	f := newFake(1)
	a := NewAllocator(f, newStopper(t), 0)
	if _, err := a.Allocate(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// Leadership moves while the batch is being confirmed: nothing is handed out.
	f.onConfirm = func() {
		f.mu.Lock()
		f.term = 5
		f.mu.Unlock()
	}
	if _, err := a.Allocate(ctx, 1); err == nil {
		t.Fatal("allocated across a term change")
	}
	f.onConfirm = nil
	f.failRead = true
	if _, err := a.Allocate(ctx, 1); err == nil {
		t.Fatal("allocated without confirming leadership")
	}
}

func TestBatcherCombinesWaitingCallers(t *testing.T) {
	var (
		mu      sync.Mutex
		next    int64 = 100
		fetches int
	)
	release := make(chan struct{})
	b := newRevisionBatcher(func(_ context.Context, n int64) (int64, error) {
		<-release
		mu.Lock()
		defer mu.Unlock()
		fetches++
		first := next
		next += n
		return first, nil
	}, stop.New())
	defer b.stop()
	const callers = 50
	got := make(chan int64, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.get(context.Background(), 1)
			if err != nil {
				t.Error(err)
			}
			got <- r
		}()
	}
	// Let the first fetch start, then release all fetches.
	close(release)
	wg.Wait()
	close(got)
	seen := map[int64]bool{}
	for r := range got {
		if r < 100 || r >= 100+callers || seen[r] {
			t.Fatalf("revision %d duplicated or out of [100, %d)", r, 100+callers)
		}
		seen[r] = true
	}
	if fetches > callers {
		t.Fatalf("%d fetches for %d callers", fetches, callers)
	}
}

func TestStateMachineApplyAndSnapshot(t *testing.T) {
	m := NewStateMachine(RangeID, 1).(*StateMachine)
	apply := func(cmd *tesserapb.MetaCommand) {
		t.Helper()
		data, _ := proto.Marshal(cmd)
		if _, err := m.Update(sm.Entry{Index: 1, Cmd: data}); err != nil {
			t.Fatal(err)
		}
	}
	hw := func(r int64) *tesserapb.MetaCommand {
		return &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_SetHighWater{SetHighWater: &tesserapb.SetHighWaterCommand{Revision: r}}}
	}
	put := func(id uint64, start string, gen uint64) *tesserapb.MetaCommand {
		return &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_PutRange{PutRange: &tesserapb.PutRangeCommand{Range: &tesserapb.RangeDescriptor{RangeId: id, StartKey: []byte(start), Generation: gen}}}}
	}
	apply(hw(50))
	apply(hw(40)) // lower: ignored
	apply(put(2, "", 1))
	apply(put(3, "m", 1))
	apply(put(2, "zzz", 1)) // same generation: ignored
	apply(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_RegisterNode{RegisterNode: &tesserapb.RegisterNodeCommand{Node: &tesserapb.NodeInfo{NodeId: 2, Name: "b"}}}})
	apply(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_RegisterNode{RegisterNode: &tesserapb.RegisterNodeCommand{Node: &tesserapb.NodeInfo{NodeId: 1, Name: "a"}}}})
	if m.state.HighWater != 50 || len(m.state.Ranges) != 2 || string(m.state.Ranges[1].StartKey) != "m" || m.state.Nodes[0].Name != "a" {
		t.Fatalf("state = %v", m.state)
	}
	var buf bytes.Buffer
	if err := m.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	m2 := NewStateMachine(RangeID, 2).(*StateMachine)
	if err := m2.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(m.state, m2.state) {
		t.Fatalf("recovered %v, want %v", m2.state, m.state)
	}
}

func TestAllocatorCurrentTakesNothing(t *testing.T) {
	ctx := context.Background()
	a := NewAllocator(newFake(1), newStopper(t), 0)
	first, _ := a.Allocate(ctx, 5)
	peek, err := a.Allocate(ctx, 0)
	if err != nil || peek != first+5 {
		t.Fatalf("Allocate(0) = %d, %v; want %d", peek, err, first+5)
	}
	again, _ := a.Allocate(ctx, 1)
	if again != peek {
		t.Fatalf("a peek consumed a revision: next allocation %d, want %d", again, peek)
	}
}

// TestRecordRanges: only descriptors newer than the records are written; a
// split's parent and child end up recorded in key order.
func TestRecordRanges(t *testing.T) {
	ctx := context.Background()
	f := newFake(1)
	desc := func(id uint64, start, end string, gen uint64) *tesserapb.RangeDescriptor {
		return &tesserapb.RangeDescriptor{RangeId: id, StartKey: []byte(start), EndKey: []byte(end), ReplicaNodeIds: []uint64{1}, Generation: gen}
	}
	if n, err := RecordRanges(ctx, f, []*tesserapb.RangeDescriptor{desc(2, "", "", 1)}); err != nil || n != 1 {
		t.Fatalf("first record: %d, %v", n, err)
	}
	if n, err := RecordRanges(ctx, f, []*tesserapb.RangeDescriptor{desc(2, "", "", 1)}); err != nil || n != 0 {
		t.Fatalf("recording the same generation again wrote %d (%v)", n, err)
	}
	// A split: the child first (overlapping the old parent), then the parent.
	n, err := RecordRanges(ctx, f, []*tesserapb.RangeDescriptor{desc(3, "m", "", 2), desc(2, "", "m", 2)})
	if err != nil || n != 2 {
		t.Fatalf("after a split: %d, %v", n, err)
	}
	// An older generation never replaces a newer record.
	if n, err := RecordRanges(ctx, f, []*tesserapb.RangeDescriptor{desc(2, "", "", 1)}); err != nil || n != 0 {
		t.Fatalf("an older generation wrote %d (%v)", n, err)
	}
	got, err := Ranges(ctx, f, true)
	if err != nil || len(got) != 2 || got[0].RangeId != 2 || string(got[0].EndKey) != "m" || got[1].RangeId != 3 || string(got[1].StartKey) != "m" {
		t.Fatalf("recorded %v, %v", got, err)
	}
	// What Ranges returns is a copy.
	got[0].EndKey = []byte("x")
	if again, _ := Ranges(ctx, f, false); string(again[0].EndKey) != "m" {
		t.Fatal("Ranges returned the state itself")
	}
}

// TestAllocatorSharesConfirmations: batches reserved while a leadership
// confirmation runs share the next one, and every caller gets numbers of
// its own.
func TestAllocatorSharesConfirmations(t *testing.T) {
	ctx := context.Background()
	f := newFake(1)
	a := NewAllocator(f, newStopper(t), 0)
	base, err := a.Allocate(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	const callers = 50
	var confirms atomic.Int64
	running, release := make(chan struct{}), make(chan struct{})
	f.onConfirm = func() {
		if confirms.Add(1) == 1 {
			close(running)
			<-release
		}
	}
	firsts := make(chan int64, callers)
	var wg sync.WaitGroup
	allocate := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, err := a.Allocate(ctx, 3)
			if err != nil {
				t.Error(err)
				return
			}
			firsts <- first
		}()
	}
	allocate()
	<-running
	for range callers - 1 {
		allocate()
	}
	// The reservations do not wait for the running confirmation.
	for {
		a.mu.Lock()
		all := a.next == base+1+callers*3
		a.mu.Unlock()
		if all {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(firsts)
	seen := map[int64]bool{}
	for first := range firsts {
		if first <= base || (first-base-1)%3 != 0 || seen[first] {
			t.Fatalf("batch at %d: not a batch of its own above %d", first, base)
		}
		seen[first] = true
	}
	if n := confirms.Load(); n != 2 {
		t.Fatalf("%d confirmations: one for the first batch, and one shared by the %d reserved meanwhile; want 2", n, callers-1)
	}
}

// TestAllocatorLease: batches reserved within the lease of a confirmation
// round need no round of their own; EndLease, a new term or the lease
// running out make batches wait for a round again, and a round begun before
// EndLease installs no lease.
func TestAllocatorLease(t *testing.T) {
	ctx := context.Background()
	f := newFake(1)
	a := NewAllocator(f, newStopper(t), time.Hour)
	var rounds atomic.Int64
	f.onConfirm = func() { rounds.Add(1) }
	allocate := func() {
		t.Helper()
		if _, err := a.Allocate(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	roundsFor := func(what string, want int64) {
		t.Helper()
		before := rounds.Load()
		allocate()
		if got := rounds.Load() - before; got != want {
			t.Fatalf("%s: %d leadership checks, want %d", what, got, want)
		}
	}
	roundsFor("the first batch of a term (the high-water read and a round)", 2)
	for range 10 {
		roundsFor("a batch within the lease", 0)
	}
	a.EndLease()
	roundsFor("the first batch after EndLease", 1)
	roundsFor("a batch within the new lease", 0)
	f.mu.Lock()
	f.term = 2
	f.mu.Unlock()
	roundsFor("the first batch of a new term", 2)
	roundsFor("a batch within the new term's lease", 0)

	// EndLease while a round runs: that round installs no lease.
	a.EndLease()
	f.onConfirm = func() {
		rounds.Add(1)
		a.EndLease()
	}
	roundsFor("a batch whose round overlaps EndLease", 1)
	f.onConfirm = func() { rounds.Add(1) }
	roundsFor("the batch after it", 1)

	// A lease runs out.
	short := NewAllocator(f, newStopper(t), 20*time.Millisecond)
	if _, err := short.Allocate(ctx, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	before := rounds.Load()
	if _, err := short.Allocate(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if rounds.Load() == before {
		t.Fatal("a batch after the lease ran out took no round")
	}
}

// TestTxnRecords: the first decision recorded for a write spanning ranges
// stands; a committed record goes once every range has applied it (or its
// coordinator forgets it), an aborted one only when its coordinator does.
func TestTxnRecords(t *testing.T) {
	m := NewStateMachine(RangeID, 1).(*StateMachine)
	apply := func(cmd *tesserapb.MetaCommand) sm.Result {
		t.Helper()
		data, _ := proto.Marshal(cmd)
		res, err := m.Update(sm.Entry{Index: 1, Cmd: data})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// A commit at rev was held from rev-5.
	decide := func(id string, commit bool, rev int64, ranges ...uint64) (uint64, *tesserapb.TxnRecord) {
		t.Helper()
		res := apply(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_DecideTxn{DecideTxn: &tesserapb.DecideTxnCommand{
			TxnId: []byte(id), Commit: commit, Revision: rev, Path: []bool{true}, RangeIds: ranges, MinHoldRevision: rev - 5,
		}}})
		rec := &tesserapb.TxnRecord{}
		if err := proto.Unmarshal(res.Data, rec); err != nil {
			t.Fatal(err)
		}
		return res.Value, rec
	}
	forget := func(id string, rangeID uint64) {
		apply(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_ForgetTxn{ForgetTxn: &tesserapb.ForgetTxnCommand{TxnId: []byte(id), RangeId: rangeID}}})
	}
	records := func() int { return len(m.state.TxnRecords) }

	if v, rec := decide("t1", true, 40, 2, 3); v != TxnCommitted || rec.Revision != 40 || len(rec.RangeIds) != 2 {
		t.Fatalf("first decision: %d %v", v, rec)
	}
	// A recovering range's abort comes too late: the commit stands.
	if v, rec := decide("t1", false, 0); v != TxnCommitted || rec.Revision != 40 {
		t.Fatalf("late abort: %d %v", v, rec)
	}
	forget("t1", 2)
	if records() != 1 {
		t.Fatal("the record went while range 3 had not applied it")
	}
	// A range settling the write from the record still learns every range
	// the write held.
	if _, rec := decide("t1", false, 0); len(rec.RangeIds) != 1 || !slices.Equal(rec.Participants, []uint64{2, 3}) {
		t.Fatalf("record after range 2 applied it: ranges %v, participants %v", rec.RangeIds, rec.Participants)
	}
	forget("t1", 3)
	if records() != 0 {
		t.Fatal("the record stayed after both ranges applied it")
	}

	// A range recorded the abort first: the coordinator's commit finds it.
	if v, _ := decide("t2", false, 0); v != TxnAborted {
		t.Fatalf("abort: %d", v)
	}
	if v, rec := decide("t2", true, 50, 2); v != TxnAborted || rec.Committed {
		t.Fatalf("commit after an abort: %d %v", v, rec)
	}
	forget("t2", 2)
	if records() != 1 {
		t.Fatal("an abort went before its coordinator saw it")
	}
	forget("t2", 0)
	if records() != 0 {
		t.Fatal("the coordinator forgot an abort and it stayed")
	}

	// Snapshots carry the records.
	decide("t3", true, 60, 4)
	var buf bytes.Buffer
	if err := m.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	m2 := NewStateMachine(RangeID, 2).(*StateMachine)
	if err := m2.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(m2.state.TxnRecords) != 1 || m2.state.TxnRecords[0].Revision != 60 {
		t.Fatalf("recovered records %v", m2.state.TxnRecords)
	}
	forget("t3", 0)

	// Sweeps: an abort nobody forgets goes at the second sweep after it
	// was recorded, and the floor rises to that sweep's revision then; a
	// commit, marked stale for the sweeper to settle, stays until its
	// ranges forget it.
	floor := int64(95)
	sweep := func() {
		floor += 5
		apply(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_SweepTxnRecords{SweepTxnRecords: &tesserapb.SweepTxnRecordsCommand{Floor: floor}}})
	}
	decide("t4", false, 0)
	decide("t5", true, 70, 2)
	sweep()
	if records() != 2 || m.state.TxnFloor != 0 || !m.state.TxnRecords[0].Stale || !m.state.TxnRecords[1].Stale {
		t.Fatalf("after one sweep: %v, floor %d", m.state.TxnRecords, m.state.TxnFloor)
	}
	sweep()
	if records() != 1 || !m.state.TxnRecords[0].Committed || m.state.TxnFloor != 105 {
		t.Fatalf("after two sweeps: %v, floor %d", m.state.TxnRecords, m.state.TxnFloor)
	}
	// The swept write's coordinator, its holds below the floor, cannot
	// record a commit now; a write held above it can.
	if v, rec := decide("t4", true, 90); v != TxnAborted || rec.Committed {
		t.Fatalf("commit of a swept write: %d %v", v, rec)
	}
	if v, _ := decide("t6", true, 115, 2); v != TxnCommitted {
		t.Fatalf("commit held above the floor: %d", v)
	}
}
