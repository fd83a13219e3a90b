package statemachine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func putCmd(t testing.TB, rev int64, key, value string) []byte {
	return txnCmd(t, rev, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(value)},
	}}}})
}

// TestRestart: applied state survives closing and reopening the Store, and
// Open returns the persisted applied index.
func TestRestart(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 10; i++ {
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%d", i), "v"), putCmd(t, h.nextRev(), "same", fmt.Sprint(i)))
	}
	if err := h.rsm.Sync(); err != nil {
		t.Fatal(err)
	}
	before := h.dump(t)
	h.restart()
	if h.index != 20 {
		t.Fatalf("Open returned applied index %d, want 20", h.index)
	}
	if after := h.dump(t); after != before {
		t.Fatalf("after restart:\n%s\nbefore:\n%s", after, before)
	}
	// And it carries on.
	res := h.update(putCmd(t, h.nextRev(), "same", "after"))
	if err := ErrorFromResult(res[0]); err != nil {
		t.Fatal(err)
	}
	v := h.view()
	defer v.Close()
	if v.AppliedIndex() != 21 || v.Revision() != h.lastRev {
		t.Fatalf("applied %d rev %d", v.AppliedIndex(), v.Revision())
	}
}

// TestRangesShareStore: two ranges in one Pebble keep their metadata apart,
// and Store.Range finds the running ones.
func TestRangesShareStore(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r1 := s.CreateStateMachine(1, 1).(*RangeSM)
	r2 := s.CreateStateMachine(2, 1).(*RangeSM)
	for _, r := range []*RangeSM{r1, r2} {
		if _, err := r.Open(nil); err != nil {
			t.Fatal(err)
		}
	}
	if s.Range(1) != r1 || s.Range(2) != r2 || s.Range(3) != nil {
		t.Fatal("Store.Range does not find the running ranges")
	}
	if _, err := r1.Update([]sm.Entry{{Index: 5, Cmd: putCmd(t, 9, "a", "1")}}); err != nil {
		t.Fatal(err)
	}
	v2, err := r2.View()
	if err != nil {
		t.Fatal(err)
	}
	if v2.AppliedIndex() != 0 || v2.Revision() != 1 {
		t.Fatalf("range 2 sees range 1's metadata: applied %d rev %d", v2.AppliedIndex(), v2.Revision())
	}
	v2.Close()
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Range(1) != nil {
		t.Fatal("closed range still registered")
	}
	if _, err := r1.View(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("View after Close: %v", err)
	}
	if s.DiskSizeBytes() <= 0 {
		t.Fatal("DiskSizeBytes is not positive")
	}
}

// TestLookup: Lookup runs a func(*View) on a fresh view and refuses anything
// else.
func TestLookup(t *testing.T) {
	h := newHarness(t)
	h.update(putCmd(t, h.nextRev(), "a", "1"))
	out, err := h.rsm.Lookup(func(v *View) (any, error) {
		return v.Range(&pb.RangeRequest{Key: []byte("a")})
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp := out.(*pb.RangeResponse); len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "1" {
		t.Fatalf("Lookup: %v", resp)
	}
	if _, err := h.rsm.Lookup("get a"); err == nil {
		t.Fatal("Lookup accepted a string")
	}
}

// TestViewsAreConsistentDuringUpdates reads while batches are applied: every
// view must see both keys of each batch or neither (run with -race).
func TestViewsAreConsistentDuringUpdates(t *testing.T) {
	h := newHarness(t)
	const batches = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 1)
	wg.Add(1)
	go h.readViews(&wg, stop, errc, false, func(v *View) error {
		resp, err := v.Range(&pb.RangeRequest{Key: []byte("x"), RangeEnd: []byte("z")})
		switch {
		case err != nil:
			return err
		case len(resp.Kvs) == 2 && !bytes.Equal(resp.Kvs[0].Value, resp.Kvs[1].Value), len(resp.Kvs) == 1:
			return fmt.Errorf("half-applied batch: %v", resp.Kvs)
		}
		return nil
	})
	for i := 0; i < batches; i++ {
		h.update(putCmd(t, h.nextRev(), "x", fmt.Sprint(i)), putCmd(t, h.nextRev(), "y", fmt.Sprint(i)))
	}
	stopAndCheck(t, stop, &wg, errc)
}

// TestSnapshotStopped: SaveSnapshot and RecoverFromSnapshot honour done.
func TestSnapshotStopped(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3000; i++ {
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%05d", i), "v"))
	}
	done := make(chan struct{})
	close(done)
	prepared, err := h.rsm.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := h.rsm.SaveSnapshot(prepared, &buf, done); !errors.Is(err, sm.ErrSnapshotStopped) {
		t.Fatalf("SaveSnapshot with done closed: %v", err)
	}
	full := h.saveSnapshot(t)
	if err := h.rsm.RecoverFromSnapshot(bytes.NewReader(full), done); !errors.Is(err, sm.ErrSnapshotStopped) {
		t.Fatalf("RecoverFromSnapshot with done closed: %v", err)
	}
	if _, err := h.rsm.View(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("View during an interrupted recovery: %v", err)
	}
	// A crash here would leave no state: Open reports index 0.
	h.restart()
	if h.index != 0 {
		t.Fatalf("after an interrupted recovery Open returned %d", h.index)
	}
	if err := h.rsm.RecoverFromSnapshot(bytes.NewReader(full), nil); err != nil {
		t.Fatal(err)
	}
	if again := h.saveSnapshot(t); !bytes.Equal(again, full) {
		t.Fatal("recovered state differs from the snapshot")
	}
	// A truncated snapshot is an error, not a panic.
	if err := h.rsm.RecoverFromSnapshot(bytes.NewReader(full[:len(full)/2]), nil); err == nil {
		t.Fatal("truncated snapshot accepted")
	}
}

// TestErrorCodes: each sentinel has its own stable code and survives the
// Result round trip.
func TestErrorCodes(t *testing.T) {
	want := map[error]int32{
		ErrCompacted: 1, ErrFutureRev: 2, ErrLeaseNotFound: 3, ErrLeaseExists: 4,
		ErrKeyNotFound: 5, ErrDuplicateKey: 6, ErrStaleRevision: 7, ErrEmptyKey: 8,
		ErrWrongRange: 9, ErrInvalidCommand: 10, ErrUnavailable: 11, ErrInvalidSplit: 12,
		ErrLeaseProofOld: 13, ErrStaleLeader: 14, ErrRangeHeld: 15, ErrNotHeld: 16, ErrHoldConflict: 17,
	}
	for err, code := range want {
		if got := ErrorCode(err); got != code {
			t.Errorf("ErrorCode(%v) = %d, want %d", err, got, code)
		}
		wrapped := errorf(err, "detail")
		res := &tesserapb.Result{Code: ErrorCode(wrapped), Message: wrapped.Error()}
		back := ErrorFromResult(res)
		if !errors.Is(back, err) || back.Error() != wrapped.Error() {
			t.Errorf("round trip of %v gave %v", wrapped, back)
		}
	}
	if ErrorCode(nil) != 0 || ErrorFromResult(&tesserapb.Result{}) != nil {
		t.Error("success is not code 0")
	}
	if ErrorCode(errors.New("disk on fire")) != CodeUnknown {
		t.Error("a foreign error got a sentinel's code")
	}
}

// TestBounds: a range with bounds refuses requests outside them.
func TestBounds(t *testing.T) {
	h := newHarness(t)
	start, end := h.rsm.Bounds()
	if len(start) != 0 || end != nil {
		t.Fatalf("default bounds [%q, %q)", start, end)
	}
	// Set bounds directly (as a snapshot of a split range would).
	b := bounds{start: []byte("b"), end: []byte("m"), generation: 3}
	if err := h.store.db.Set(metaKey(testRangeID, metaBounds), b.encode(), nil); err != nil {
		t.Fatal(err)
	}
	h.restart()
	if start, end := h.rsm.Bounds(); string(start) != "b" || string(end) != "m" || h.rsm.Generation() != 3 {
		t.Fatalf("bounds [%q, %q) gen %d", start, end, h.rsm.Generation())
	}
	for _, tc := range []struct {
		key, end string
		want     error
	}{
		{"c", "", nil}, {"b", "m", nil}, {"a", "", ErrWrongRange}, {"m", "", ErrWrongRange},
		{"c", "\x00", ErrWrongRange}, {"c", "n", ErrWrongRange},
	} {
		res := h.update(txnCmd(t, h.nextRev(), &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{
			RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(tc.key), RangeEnd: []byte(tc.end)},
		}}}}))
		if err := ErrorFromResult(res[0]); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("delete [%q, %q): %v, want %v", tc.key, tc.end, err, tc.want)
		}
		v := h.view()
		_, err := v.Range(&pb.RangeRequest{Key: []byte(tc.key), RangeEnd: []byte(tc.end)})
		v.Close()
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("range [%q, %q): %v, want %v", tc.key, tc.end, err, tc.want)
		}
	}
}

func TestMidKey(t *testing.T) {
	h := newHarness(t)
	midKey := func() []byte {
		t.Helper()
		v := h.view()
		defer v.Close()
		mid, err := v.MidKey()
		if err != nil {
			t.Fatal(err)
		}
		return mid
	}
	put := func(key, value string) {
		t.Helper()
		req := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}}}}}
		if res := h.update(txnCmd(t, h.nextRev(), req)); res[0].Code != 0 {
			t.Fatalf("put %s: %s", key, res[0].Message)
		}
	}
	if mid := midKey(); mid != nil {
		t.Fatalf("MidKey of an empty range = %q", mid)
	}
	put("a", strings.Repeat("v", 10))
	if mid := midKey(); mid != nil {
		t.Fatalf("MidKey of a one-key range = %q", mid)
	}
	for i := 0; i < 100; i++ {
		put(fmt.Sprintf("k%03d", i), strings.Repeat("v", 100))
	}
	mid := string(midKey())
	if mid < "k045" || mid > "k055" {
		t.Fatalf("MidKey = %q, want about k050", mid)
	}
}

// TestPaginatedCounts: paging through a large interval at one revision, every
// page's count is the number of live keys from its start to the end, also
// after later writes and deletes and when served from the count cache.
func TestPaginatedCounts(t *testing.T) {
	h := newHarness(t)
	put := func(key string) {
		t.Helper()
		req := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("v")}}}}}
		if res := h.update(txnCmd(t, h.nextRev(), req)); res[0].Code != 0 {
			t.Fatalf("put %s: %s", key, res[0].Message)
		}
	}
	del := func(key string) {
		t.Helper()
		req := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key)}}}}}
		if res := h.update(txnCmd(t, h.nextRev(), req)); res[0].Code != 0 {
			t.Fatalf("delete %s: %s", key, res[0].Message)
		}
	}
	const n = 5000
	for i := range n {
		put(fmt.Sprintf("p/%05d", i))
	}
	put("q") // outside the interval
	v := h.view()
	rev := v.Revision()
	v.Close()
	page := func(atRev int64, from string) (*pb.RangeResponse, error) {
		v := h.view()
		defer v.Close()
		return v.Range(&pb.RangeRequest{Key: []byte(from), RangeEnd: []byte("p0"), Limit: 300, Revision: atRev})
	}
	walk := func(atRev int64, want int) {
		t.Helper()
		from, seen := "p/", 0
		for {
			resp, err := page(atRev, from)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Count != int64(want-seen) {
				t.Fatalf("at %d from %q: count %d, want %d", atRev, from, resp.Count, want-seen)
			}
			seen += len(resp.Kvs)
			if !resp.More {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if seen != want {
			t.Fatalf("at %d: paged through %d keys, want %d", atRev, seen, want)
		}
	}
	walk(rev, n)
	walk(rev, n) // again, from the cache
	// Later writes change nothing at rev, and counts at the new revision are new.
	for i := 0; i < n; i += 7 {
		del(fmt.Sprintf("p/%05d", i))
	}
	put("p/99999")
	walk(rev, n)
	v = h.view()
	now := v.Revision()
	v.Close()
	walk(now, n-(n+6)/7+1)
}

// TestWaitApplied: a reader waiting for an applied index returns once an
// Update applied it, with the batch's events already published, and gets
// ErrUnavailable when the range closes first.
func TestWaitApplied(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.update(putCmd(t, h.nextRev(), "a", "1"))
	h.takeApplied()
	applied := *h.indexOf(testRangeID)
	if err := h.rsm.WaitApplied(ctx, applied); err != nil {
		t.Fatalf("waiting for the applied index %d: %v", applied, err)
	}
	done := make(chan error, 1)
	go func() { done <- h.rsm.WaitApplied(ctx, applied+2) }()
	h.update(putCmd(t, h.nextRev(), "b", "2"))
	select {
	case err := <-done:
		t.Fatalf("returned (%v) before index %d was applied", err, applied+2)
	case <-time.After(50 * time.Millisecond):
	}
	h.update(putCmd(t, h.nextRev(), "c", "3"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if events := len(h.takeApplied()); events != 2 {
		t.Fatalf("%d applies published, want 2", events)
	}
	short, stop := context.WithTimeout(ctx, 20*time.Millisecond)
	defer stop()
	if err := h.rsm.WaitApplied(short, applied+3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting past the log: %v", err)
	}
	go func() { done <- h.rsm.WaitApplied(ctx, applied+3) }()
	h.close()
	if err := <-done; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("waiting on a closed range: %v, want ErrUnavailable", err)
	}
}

// TestBatchRefused: a batch carrying a revision, or holding a batch, is
// refused as an invalid command and changes nothing; the commands of a
// batch around the refused one still apply.
func TestBatchRefused(t *testing.T) {
	h := newHarness(t)
	decode := func(data []byte) *tesserapb.Command {
		cmd := &tesserapb.Command{}
		if err := proto.Unmarshal(data, cmd); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	batchOf := func(rev int64, cmds ...*tesserapb.Command) *tesserapb.Command {
		return &tesserapb.Command{Revision: rev, Op: &tesserapb.Command_Batch{Batch: &tesserapb.BatchCommand{Commands: cmds}}}
	}
	res := h.update(mustMarshal(t, batchOf(h.nextRev(), decode(putCmd(t, h.nextRev(), "a", "1")))))
	if err := ErrorFromResult(res[0]); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("batch with a revision: %v, want ErrInvalidCommand", err)
	}
	if v := h.view(); v.Revision() != 1 || v.state.lastCmdRev != 0 {
		t.Fatalf("a refused batch changed the range: revision %d, last command revision %d", v.Revision(), v.state.lastCmdRev)
	} else {
		v.Close()
	}

	first, last := h.nextRev(), int64(0)
	inner := batchOf(0, decode(putCmd(t, h.nextRev(), "b", "2")))
	last = h.nextRev()
	entry := mustMarshal(t, batchOf(0, decode(putCmd(t, first, "a", "1")), inner, decode(putCmd(t, last, "c", "3"))))
	out, err := h.rsm.Update([]sm.Entry{{Index: h.index + 1, Cmd: entry}})
	if err != nil {
		t.Fatal(err)
	}
	h.index++
	results, err := DecodeBatchResult(out[0].Result, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []error{nil, ErrInvalidCommand, nil} {
		res, err := DecodeResult(results[i])
		if err != nil {
			t.Fatal(err)
		}
		if got := ErrorFromResult(res); !errors.Is(got, want) || (want == nil && got != nil) {
			t.Fatalf("command %d of the batch: %v, want %v", i, got, want)
		}
	}
	v := h.view()
	defer v.Close()
	if v.Revision() != last {
		t.Fatalf("revision %d after the batch, want %d", v.Revision(), last)
	}
	for key, want := range map[string]string{"a": "1", "b": "", "c": "3"} {
		resp, err := v.Range(&pb.RangeRequest{Key: []byte(key)})
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("key %q = %q after the batch, want %q", key, got, want)
		}
	}
}

// TestViewsShareSnapshots: views opened with no commit between them share one
// Pebble snapshot, closed after the last of them; a view opened after a
// commit sees it, while the views already open keep theirs.
func TestViewsShareSnapshots(t *testing.T) {
	h := newHarness(t)
	h.update(putCmd(t, h.nextRev(), "k", "1"))
	v1, v2 := h.view(), h.view()
	if v1.snap.snap != v2.snap.snap {
		t.Fatal("two views with no commit between them have different snapshots")
	}
	h.update(putCmd(t, h.nextRev(), "k", "2"))
	v3 := h.view()
	if v3.snap.snap == v1.snap.snap {
		t.Fatal("a view opened after a commit reuses the snapshot taken before it")
	}
	for _, c := range []struct {
		v    *View
		want string
	}{{v1, "1"}, {v2, "1"}, {v3, "2"}} {
		resp, err := c.v.Range(&pb.RangeRequest{Key: []byte("k")})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != c.want {
			t.Fatalf("view read %v, want k=%s", resp.Kvs, c.want)
		}
	}
	v1.Close()
	v2.Close()
	v3.Close()
	h.store.snaps.mu.Lock()
	cur := h.store.snaps.cur
	h.store.snaps.mu.Unlock()
	if cur != nil {
		t.Fatalf("a shared snapshot is still open (%d holders) after every view closed", cur.refs)
	}
}

// TestSharedViewsMatchTheirMetadata: readers holding overlapping views while
// a writer commits must each see the data of the revision their metadata
// reports — the last write of the range is the key written at Revision().
func TestSharedViewsMatchTheirMetadata(t *testing.T) {
	h := newHarness(t)
	h.update(putCmd(t, h.nextRev(), "k", "0"))
	const readers, writes = 4, 300
	stop := make(chan struct{})
	errc := make(chan error, readers)
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go h.readViews(&wg, stop, errc, true, func(v *View) error {
			resp, err := v.Range(&pb.RangeRequest{Key: []byte("k")})
			if err == nil && (len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != v.Revision()) {
				err = fmt.Errorf("view at revision %d read %v", v.Revision(), resp.Kvs)
			}
			return err
		})
	}
	for i := range writes {
		h.update(putCmd(t, h.nextRev(), "k", fmt.Sprint(i+1)))
	}
	stopAndCheck(t, stop, &wg, errc)
}

// TestLeadershipBarrier: a leadership barrier records its term (kept across
// a restart); a command from a lower term (a write, a leadership barrier, a
// lease grant) is refused and changes nothing, while one from the recorded
// term, or without a term, applies.
func TestLeadershipBarrier(t *testing.T) {
	h := newHarness(t)
	inTerm := func(term uint64, cmd []byte) []byte {
		c, err := decodeCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		c.LeadershipTerm = term
		return mustMarshal(t, c)
	}
	barrier := func(term uint64) []byte {
		return inTerm(term, mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{Leadership: true}}}))
	}
	mustApply := func(what string, cmd []byte) {
		t.Helper()
		if res := h.update(cmd)[0]; res.Code != 0 {
			t.Fatalf("%s refused: %s", what, res.Message)
		}
	}
	mustRefuse := func(what string, cmd []byte) {
		t.Helper()
		if err := ErrorFromResult(h.update(cmd)[0]); !errors.Is(err, ErrStaleLeader) {
			t.Fatalf("%s answered %v, want ErrStaleLeader", what, err)
		}
	}
	mustApply("barrier of term 2", barrier(2))
	mustApply("put in term 2", inTerm(2, putCmd(t, h.nextRev(), "k", "1")))
	mustApply("barrier of term 4", barrier(4))
	// A plain barrier (as a closing range proposes) records nothing.
	h.update(mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{}}}))
	h.restart()
	mustRefuse("put in term 2 after term 4's barrier", inTerm(2, putCmd(t, h.nextRev(), "k", "stale")))
	// The barrier of a replica that lost the leadership, forwarded to the
	// new leader: it neither applies nor lowers the term.
	mustRefuse("barrier of term 3 after term 4's", barrier(3))
	mustRefuse("put in term 3 after term 4's barrier", inTerm(3, putCmd(t, h.nextRev(), "k", "stale")))
	grant := mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_LeaseGrant{LeaseGrant: &tesserapb.LeaseGrantCommand{Id: 7, TtlSeconds: 60}}})
	mustRefuse("lease grant in term 3 after term 4's barrier", inTerm(3, grant))
	mustApply("lease grant in term 4", inTerm(4, grant))
	mustApply("put in term 4", inTerm(4, putCmd(t, h.nextRev(), "k", "2")))
	mustApply("put without a term", putCmd(t, h.nextRev(), "k", "3"))
	if err := ErrorFromResult(h.update(barrier(0))[0]); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("leadership barrier without a term answered %v", err)
	}
	v := h.view()
	defer v.Close()
	resp, err := v.Range(&pb.RangeRequest{Key: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "3" || resp.Kvs[0].Version != 3 {
		t.Fatalf("k is %v, want value 3 at version 3 (the stale puts changed nothing)", resp.Kvs)
	}
}

// stopAndCheck stops the goroutines of a concurrency test and fails it with
// the first error one of them reported.
func stopAndCheck(t *testing.T, stop chan struct{}, wg *sync.WaitGroup, errc chan error) {
	t.Helper()
	close(stop)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

// readViews opens views of the test range and checks each until stop is
// closed or a check fails (its error goes to errc); with overlap, each view
// stays open until the next one has been checked, so views overlap.
func (h *harness) readViews(wg *sync.WaitGroup, stop <-chan struct{}, errc chan<- error, overlap bool, check func(*View) error) {
	defer wg.Done()
	var held *View
	defer func() {
		if held != nil {
			held.Close()
		}
	}()
	for {
		select {
		case <-stop:
			return
		default:
		}
		v, err := h.rsm.View()
		if err != nil {
			errc <- err
			return
		}
		err = check(v)
		if held != nil {
			held.Close()
			held = nil
		}
		if overlap {
			held = v
		} else {
			v.Close()
		}
		if err != nil {
			errc <- err
			return
		}
	}
}
