package statemachine

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestTxnNumbers: compares and operations are numbered depth first, and the
// path and the operations on it follow the compares' outcomes in etcd's
// order.
func TestTxnNumbers(t *testing.T) {
	req := &pb.TxnRequest{}
	if err := prototext.Unmarshal([]byte(`
compare: { key: "a" }
compare: { key: "b" }
success: { request_put: { key: "a" } }
success: { request_txn: {
  compare: { key: "c" }
  success: { request_put: { key: "c" } }
  failure: { request_txn: {
    compare: { key: "d" }
    failure: { request_put: { key: "d" } }
  } }
} }
failure: { request_range: { key: "e" } }
failure: { request_txn: {
  compare: { key: "f" }
  success: { request_put: { key: "f" } }
} }
`), req); err != nil {
		t.Fatal(err)
	}
	n := NumberTxn(req)
	// Compares: a=0 b=1, then the first nested Txn's c=2, its nested d=3,
	// then f=4. Operations: the top level's 0..3, the first nested Txn's
	// 4 (put c) and 5 (its nested Txn), that one's 6 (put d), then the
	// failure branch's nested Txn's 7 (put f).
	if n.Compares != 5 || n.Ops != 8 {
		t.Fatalf("%d compares, %d operations; want 5 and 8", n.Compares, n.Ops)
	}
	for _, tc := range []struct {
		matched  []bool // by compare number
		path     []bool
		pathOps  []int
		stopAt   int // OnPath's fn returns false at this operation (-1: never)
		upToStop []int
	}{
		{[]bool{true, true, true, true, true}, []bool{true, true}, []int{0, 1, 4}, -1, nil},
		{[]bool{true, true, false, false, true}, []bool{true, false, false}, []int{0, 1, 5, 6}, 5, []int{0, 1, 5}},
		{[]bool{true, false, true, true, true}, []bool{false, true}, []int{2, 3, 7}, 3, []int{2, 3}},
		{[]bool{false, true, true, true, false}, []bool{false, false}, []int{2, 3}, -1, nil},
	} {
		path := n.Path(req, func(c int) bool { return tc.matched[c] })
		if !slices.Equal(path, tc.path) {
			t.Errorf("matched %v: path %v, want %v", tc.matched, path, tc.path)
			continue
		}
		if got := txnPathLength(req, path); got != len(path) {
			t.Errorf("path %v: length %d", path, got)
		}
		var ops []int
		n.OnPath(req, path, func(op int) bool { ops = append(ops, op); return true })
		if !slices.Equal(ops, tc.pathOps) {
			t.Errorf("path %v: operations %v, want %v", path, ops, tc.pathOps)
		}
		if tc.stopAt >= 0 {
			ops = nil
			n.OnPath(req, path, func(op int) bool { ops = append(ops, op); return op != tc.stopAt })
			if !slices.Equal(ops, tc.upToStop) {
				t.Errorf("path %v stopped at %d: operations %v, want %v", path, tc.stopAt, ops, tc.upToStop)
			}
		}
	}
	if txnPathLength(req, []bool{true}) != -1 || txnPathLength(req, nil) != -1 {
		t.Error("a path too short for the request has a length")
	}
}

// TestCompareOutcome: a compare spanning ranges matches when every key of
// its span matched wherever it is; with no key anywhere it compares an
// empty KeyValue, and a VALUE compare on no key fails, as in etcd.
func TestCompareOutcome(t *testing.T) {
	none := &tesserapb.CompareOutcome{}
	yes := &tesserapb.CompareOutcome{Keys: true, Matched: true}
	no := &tesserapb.CompareOutcome{Keys: true}
	version0 := &pb.Compare{Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL}
	value := &pb.Compare{Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL}
	for _, tc := range []struct {
		c     *pb.Compare
		parts []*tesserapb.CompareOutcome
		want  bool
	}{
		{version0, []*tesserapb.CompareOutcome{yes, none, yes}, true},
		{version0, []*tesserapb.CompareOutcome{yes, no}, false},
		{version0, []*tesserapb.CompareOutcome{none, none}, true},
		{value, []*tesserapb.CompareOutcome{none, none}, false},
		{value, []*tesserapb.CompareOutcome{none, yes}, true},
	} {
		if got := CompareOutcome(tc.c, tc.parts); got != tc.want {
			t.Errorf("%v over %v: %t, want %t", tc.c, tc.parts, got, tc.want)
		}
	}
}

// TestClipSpan: etcd's key/range_end pairs cut to a range's bounds.
func TestClipSpan(t *testing.T) {
	b := bounds{start: []byte("c"), end: []byte("m"), generation: 2}
	for _, tc := range []struct {
		key, end       string
		wantKey, wantE string
		ok             bool
	}{
		{"d", "", "d", "", true},
		{"a", "", "", "", false},
		{"m", "", "", "", false},
		{"a", "z", "c", "m", true},
		{"d", "f", "d", "f", true},
		{"a", "c", "", "", false},
		{"a", "\x00", "c", "m", true},
		{"n", "\x00", "", "", false},
	} {
		k, e, ok := clipSpan([]byte(tc.key), []byte(tc.end), b)
		if ok != tc.ok || ok && (string(k) != tc.wantKey || string(e) != tc.wantE) {
			t.Errorf("clip [%q, %q) to %s: [%q, %q) %t", tc.key, tc.end, b, k, e, ok)
		}
	}
	whole := wholeKeyspace()
	if k, e, ok := clipSpan([]byte("a"), []byte{0}, whole); !ok || string(k) != "a" || string(e) != "\x00" {
		t.Errorf("clip [a, ∞) to the whole keyspace: [%q, %q) %t", k, e, ok)
	}
}

// TestHeldViewCannotClose: a view of a held range vouches for revisions
// below the hold only; once the write commits, for any.
func TestHeldViewCannotClose(t *testing.T) {
	h := newHarness(t)
	hold := mustMarshal(t, &tesserapb.Command{Revision: 10, Op: &tesserapb.Command_TxnHold{TxnHold: &tesserapb.TxnHoldCommand{
		TxnId: []byte("t"), Request: mustMarshal(t, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a")}}}}}),
	}}})
	if err := ErrorFromResult(h.update(hold)[0]); err != nil {
		t.Fatal(err)
	}
	v := h.view()
	if _, held := h.rsm.Hold(); v.AssumeClosed(9) != nil || held != 10 {
		t.Fatalf("closing below the hold: %v (held %d)", v.AssumeClosed(9), held)
	}
	if err := v.AssumeClosed(10); !errors.Is(err, ErrRangeHeld) {
		t.Fatalf("closing at the hold: %v", err)
	}
	v.Close()
	commit := mustMarshal(t, &tesserapb.Command{Revision: 12, Op: &tesserapb.Command_TxnCommit{TxnCommit: &tesserapb.TxnCommitCommand{TxnId: []byte("t"), Path: []bool{true}}}})
	if err := ErrorFromResult(h.update(commit)[0]); err != nil {
		t.Fatal(err)
	}
	v = h.view()
	defer v.Close()
	if _, held := h.rsm.Hold(); v.AssumeClosed(30) != nil || held != 0 || v.Revision() != 30 {
		t.Fatalf("closing after the commit: %v (held %d, revision %d)", v.AssumeClosed(30), held, v.Revision())
	}
}

// TestCoCommits: a range's commits of writes spanning ranges note the
// write's other ranges at its revision (the highest per range); the notes
// survive a restart, go to a split's child, and travel in a snapshot; the
// floor is the hold's until the commit applies.
func TestCoCommits(t *testing.T) {
	h := newHarness(t)
	put := mustMarshal(t, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a")}}}}})
	spanning := func(id string, hold, commit int64, ranges ...uint64) {
		t.Helper()
		cmds := [][]byte{
			mustMarshal(t, &tesserapb.Command{Revision: hold, Op: &tesserapb.Command_TxnHold{TxnHold: &tesserapb.TxnHoldCommand{TxnId: []byte(id), Request: put}}}),
			mustMarshal(t, &tesserapb.Command{Revision: commit, Op: &tesserapb.Command_TxnCommit{TxnCommit: &tesserapb.TxnCommitCommand{
				TxnId: []byte(id), Path: []bool{true}, RangeIds: ranges,
			}}}),
		}
		for i, cmd := range cmds {
			if err := ErrorFromResult(h.update(cmd)[0]); err != nil {
				t.Fatal(err)
			}
			v := h.view()
			if want := []int64{hold, commit}[i]; v.Floor() != want {
				t.Errorf("floor after step %d of %s: %d, want %d", i, id, v.Floor(), want)
			}
			v.Close()
		}
	}
	notes := func(rangeID uint64) string {
		v := h.viewOf(rangeID)
		defer v.Close()
		ids, revs := v.CoCommits()
		return fmt.Sprint(ids, revs)
	}
	spanning("t1", 10, 12, testRangeID, 9, 5)
	spanning("t2", 20, 22, 9, testRangeID)
	const want = "[5 9] [12 22]"
	if got := notes(testRangeID); got != want {
		t.Fatalf("co-commits %s, want %s", got, want)
	}
	h.restart()
	if got := notes(testRangeID); got != want {
		t.Fatalf("co-commits after a restart %s, want %s", got, want)
	}
	if err := ErrorFromResult(h.update(splitCmd(t, "m", 8))[0]); err != nil {
		t.Fatal(err)
	}
	h.flushSplitLog()
	if got := notes(8); got != want {
		t.Fatalf("the split's child has co-commits %s, want %s", got, want)
	}
	snap := h.saveSnapshot(t)
	h.close()
	h.openStore(t.TempDir(), nil)
	if err := h.rsm.RecoverFromSnapshot(bytes.NewReader(snap), nil); err != nil {
		t.Fatal(err)
	}
	if got := notes(testRangeID); got != want {
		t.Fatalf("co-commits recovered from a snapshot %s, want %s", got, want)
	}
}
