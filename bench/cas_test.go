package bench

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// recordingTxn captures the Txn a casState builds.
type recordingTxn struct {
	cmps           []clientv3.Cmp
	thens, elses   []clientv3.Op
	committedCalls int
}

func (r *recordingTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { r.cmps = cs; return r }
func (r *recordingTxn) Then(ops ...clientv3.Op) clientv3.Txn { r.thens = ops; return r }
func (r *recordingTxn) Else(ops ...clientv3.Op) clientv3.Txn { r.elses = ops; return r }
func (r *recordingTxn) Commit() (*clientv3.TxnResponse, error) {
	r.committedCalls++
	return nil, context.Canceled
}

func TestCASTxnComparesBelievedModRevision(t *testing.T) {
	s := newCASState()
	check := func(wantRev int64) {
		t.Helper()
		rt := &recordingTxn{}
		s.txn(rt, "t/1", "v")
		if len(rt.cmps) != 1 || len(rt.thens) != 1 || len(rt.elses) != 1 {
			t.Fatalf("txn has %d compares, %d thens, %d elses", len(rt.cmps), len(rt.thens), len(rt.elses))
		}
		cmp := rt.cmps[0].GetCompare()
		if string(cmp.Key) != "t/1" || cmp.Target != pb.Compare_MOD || cmp.Result != pb.Compare_EQUAL {
			t.Fatalf("compare %+v, want mod_revision(t/1) = …", cmp)
		}
		if got := cmp.TargetUnion.(*pb.Compare_ModRevision).ModRevision; got != wantRev {
			t.Fatalf("compare against mod_revision %d, want %d", got, wantRev)
		}
		if !rt.thens[0].IsPut() || string(rt.thens[0].KeyBytes()) != "t/1" || string(rt.thens[0].ValueBytes()) != "v" {
			t.Fatalf("then %+v, want put t/1=v", rt.thens[0])
		}
		if !rt.elses[0].IsGet() || string(rt.elses[0].KeyBytes()) != "t/1" {
			t.Fatalf("else %+v, want get t/1", rt.elses[0])
		}
	}
	check(0) // never seen: believed absent

	success := &clientv3.TxnResponse{Header: &pb.ResponseHeader{Revision: 42}, Succeeded: true}
	if s.apply("t/1", success) {
		t.Fatal("a successful txn reported a conflict")
	}
	check(42)

	// Someone else wrote the key at 50: the compare fails, the else-read
	// tells the new revision, and the next txn compares against it.
	conflict := &clientv3.TxnResponse{Header: &pb.ResponseHeader{Revision: 51}, Responses: []*pb.ResponseOp{{
		Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Key: []byte("t/1"), ModRevision: 50}}}},
	}}}
	if !s.apply("t/1", conflict) {
		t.Fatal("a failed compare was not reported as a conflict")
	}
	check(50)

	// The key was deleted by someone else: believed absent again.
	gone := &clientv3.TxnResponse{Header: &pb.ResponseHeader{Revision: 60}, Responses: []*pb.ResponseOp{{
		Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{}},
	}}}
	if !s.apply("t/1", gone) {
		t.Fatal("conflict not reported")
	}
	check(0)
}

func TestOwnedIndex(t *testing.T) {
	for _, tc := range []struct {
		n           int64
		id, clients int
		space, want int64
	}{
		{0, 0, 4, 100, 0},
		{5, 2, 4, 100, 6},    // 5 is in the block 4..7; client 2 owns 6
		{99, 3, 4, 100, 99},  // its own key
		{98, 3, 10, 100, 93}, // block 90..99
		{99, 7, 10, 95, 7},   // 97 is past the space: wrap to client 7's first key
		{3, 6, 8, 5, 1},      // more clients than keys: shared
		{123456, 1, 4, 0, 123457},
	} {
		got := ownedIndex(tc.n, tc.id, tc.clients, tc.space)
		if got != tc.want {
			t.Errorf("ownedIndex(%d, client %d of %d, space %d) = %d, want %d", tc.n, tc.id, tc.clients, tc.space, got, tc.want)
		}
		if got%int64(tc.clients) != int64(tc.id) && tc.clients <= int(tc.space) {
			t.Errorf("ownedIndex(%d, client %d of %d) = %d is not the client's", tc.n, tc.id, tc.clients, got)
		}
	}
}

func TestK8sMixAndOwnership(t *testing.T) {
	total := 0
	counts := map[string]int{}
	for _, m := range k8sMix {
		total += m.percent
	}
	if total != 100 {
		t.Fatalf("k8s mix sums to %d%%", total)
	}
	for roll := range 100 {
		counts[pickK8sOp(roll)]++
	}
	for _, m := range k8sMix {
		if counts[m.op] != m.percent {
			t.Errorf("%s picked for %d of 100 rolls, want %d", m.op, counts[m.op], m.percent)
		}
	}
	// Client 3 of 10 over 95 objects owns slots 3, 13, …, 93.
	for k := range 10 {
		if got := k8sOwnedSlot(3, 10, 95, func(int) int { return k }); got != 3+10*k {
			t.Fatalf("slot %d, want %d", got, 3+10*k)
		}
	}
	if got := k8sOwnedSlot(5, 10, 95, func(n int) int { return n - 1 }); got != 85 {
		t.Fatalf("last owned slot %d, want 85", got)
	}
	// More clients than objects: any slot.
	if got := k8sOwnedSlot(7, 10, 5, func(n int) int { return n - 1 }); got != 4 {
		t.Fatalf("slot %d, want 4", got)
	}
	if k := k8sObjectKey(4, 10); k != "/registry/configmaps/ns-01/obj-000004" {
		t.Fatalf("key %q", k)
	}
}
