package router

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// txnDepth is the nesting depth of a Txn (1: no nested Txn).
func txnDepth(r *pb.TxnRequest) int {
	deepest := 0
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if t := op.GetRequestTxn(); t != nil {
				deepest = max(deepest, txnDepth(t))
			}
		}
	}
	return deepest + 1
}

// FuzzCheckTxn: any Txn a client can send is checked without panicking;
// one the check lets through is no deeper and no larger than
// --max-txn-ops allows, and the state machine can number its compares
// and operations and follow any path through it.
func FuzzCheckTxn(f *testing.F) {
	seed := func(r *pb.TxnRequest) {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k")}}}}})
	nested := &pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("c")}}}
	for range 5 {
		nested = &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: nested}}}, Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("r"), RangeEnd: []byte{0}}}}}}
	}
	seed(nested)
	seed(&pb.TxnRequest{Success: []*pb.RequestOp{{}}})
	const maxTxnOps = 8
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &pb.TxnRequest{}
		if proto.Unmarshal(data, r) != nil {
			return
		}
		if checkTxn(r, maxTxnOps) != nil {
			return
		}
		if d := txnDepth(r); d > maxTxnOps+1 {
			t.Fatalf("a Txn %d deep passed the check with --max-txn-ops %d", d, maxTxnOps)
		}
		n := statemachine.NumberTxn(r)
		path := n.Path(r, func(i int) bool { return i%2 == 0 })
		n.OnPath(r, path, func(int) bool { return true })
	})
}
