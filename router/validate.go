package router

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/statemachine"
)

// The checks below are etcd's request checks (server/etcdserver/api/v3rpc/key.go),
// made before anything is proposed, so bad input changes nothing.

func checkRange(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func checkRangeStream(r *pb.RangeRequest) error {
	if err := checkRange(r); err != nil {
		return err
	}
	defaultOrder := r.SortTarget == pb.RangeRequest_KEY &&
		(r.SortOrder == pb.RangeRequest_NONE || r.SortOrder == pb.RangeRequest_ASCEND)
	if !defaultOrder {
		return status.Error(codes.Unimplemented, "RangeStream does not support custom sort orders")
	}
	if r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0 {
		return status.Error(codes.Unimplemented, "RangeStream does not support revision filters")
	}
	return nil
}

func checkPut(r *pb.PutRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func checkDelete(r *pb.DeleteRangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// checkTxn checks every operation of the whole tree first (checkTxnOps),
// then the duplicate-key rule, as etcd does (checkTxnRequest, then
// checkIntervals): a txn breaking both answers with the operation's error.
func checkTxn(r *pb.TxnRequest, maxTxnOps int) error {
	if err := checkTxnOps(r, maxTxnOps); err != nil {
		return err
	}
	// After the cheap checks, as etcd does, to avoid quadratic work on
	// requests refused anyway.
	if err := statemachine.CheckTxnWrites(r); err != nil {
		return rpctypes.ErrGRPCDuplicateKey
	}
	return nil
}

func checkTxnOps(r *pb.TxnRequest, maxTxnOps int) error {
	opc := max(len(r.Compare), len(r.Success), len(r.Failure))
	if opc > maxTxnOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			if err := checkRequestOp(op, maxTxnOps-opc); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkRequestOp(op *pb.RequestOp, maxTxnOps int) error {
	switch req := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return checkRange(req.RequestRange)
	case *pb.RequestOp_RequestPut:
		return checkPut(req.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return checkDelete(req.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return checkTxnOps(req.RequestTxn, maxTxnOps)
	default:
		// An empty operation: etcd answers "key not found".
		return rpctypes.ErrGRPCKeyNotFound
	}
}
