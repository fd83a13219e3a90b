package router

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func put(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key)}}}
}

func del(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
}

func get(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key)}}}
}

func txn(then, els []*pb.RequestOp) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: then, Failure: els}}}
}

func TestCheckTxn(t *testing.T) {
	ops := func(o ...*pb.RequestOp) []*pb.RequestOp { return o }
	for _, tc := range []struct {
		name string
		req  *pb.TxnRequest
		want error
	}{
		{"distinct puts", &pb.TxnRequest{Success: ops(put("a"), put("b"))}, nil},
		{"same key in both branches", &pb.TxnRequest{Success: ops(put("a")), Failure: ops(put("a"))}, nil},
		{"duplicate put", &pb.TxnRequest{Success: ops(put("a"), put("a"))}, rpctypes.ErrGRPCDuplicateKey},
		{"put inside deleted range", &pb.TxnRequest{Success: ops(del("a", "c"), put("b"))}, rpctypes.ErrGRPCDuplicateKey},
		{"put outside deleted range", &pb.TxnRequest{Success: ops(del("a", "c"), put("c"))}, nil},
		{"reads may repeat", &pb.TxnRequest{Success: ops(get("a"), get("a"), put("a"))}, nil},
		{"nested branches are exclusive", &pb.TxnRequest{Success: ops(txn(ops(put("a")), ops(put("a"))))}, nil},
		{"nested put collides with outer put", &pb.TxnRequest{Success: ops(put("a"), txn(ops(put("a")), nil))}, rpctypes.ErrGRPCDuplicateKey},
		{"nested delete covers outer put", &pb.TxnRequest{Success: ops(put("b"), txn(nil, ops(del("a", "z"))))}, rpctypes.ErrGRPCDuplicateKey},
		{"empty key in compare", &pb.TxnRequest{Compare: []*pb.Compare{{}}}, rpctypes.ErrGRPCEmptyKey},
		{"empty key in nested put", &pb.TxnRequest{Success: ops(txn(ops(put("")), nil))}, rpctypes.ErrGRPCEmptyKey},
		{"empty operation", &pb.TxnRequest{Success: ops(&pb.RequestOp{})}, rpctypes.ErrGRPCKeyNotFound},
		// etcd checks every operation of the tree before any duplicate.
		{"duplicate in a nested txn before an empty key", &pb.TxnRequest{Success: ops(txn(ops(put("a"), put("a")), nil)), Failure: ops(put(""))}, rpctypes.ErrGRPCEmptyKey},
		{"too many ops", &pb.TxnRequest{Success: make([]*pb.RequestOp, 4)}, rpctypes.ErrGRPCTooManyOps},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkTxn(tc.req, 3); got != tc.want {
				t.Fatalf("checkTxn = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckRangeAndPut(t *testing.T) {
	if err := checkRange(&pb.RangeRequest{Key: []byte("a"), SortOrder: 7}); err != rpctypes.ErrGRPCInvalidSortOption {
		t.Fatalf("bad sort order: %v", err)
	}
	if err := checkPut(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true}); err != rpctypes.ErrGRPCValueProvided {
		t.Fatalf("value with ignore_value: %v", err)
	}
	if err := checkPut(&pb.PutRequest{Key: []byte("a"), Lease: 5, IgnoreLease: true}); err != rpctypes.ErrGRPCLeaseProvided {
		t.Fatalf("lease with ignore_lease: %v", err)
	}
	if err := checkRangeStream(&pb.RangeRequest{Key: []byte("a"), SortOrder: pb.RangeRequest_DESCEND}); err == nil {
		t.Fatal("RangeStream accepted a custom sort order")
	}
}
