package router

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

func checkTxn(r *pb.TxnRequest, maxTxnOps int) error {
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
	if _, _, err := checkIntervals(r.Success); err != nil {
		return err
	}
	if _, _, err := checkIntervals(r.Failure); err != nil {
		return err
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
		return checkTxn(req.RequestTxn, maxTxnOps)
	default:
		// etcd treats an empty op as a no-op.
		return nil
	}
}

// interval is a key range [start, end); end nil means the single key start.
type interval struct{ start, end []byte }

func (iv interval) contains(key []byte) bool {
	if iv.end == nil {
		return bytes.Equal(iv.start, key)
	}
	if bytes.Compare(key, iv.start) < 0 {
		return false
	}
	return len(iv.end) == 1 && iv.end[0] == 0 || bytes.Compare(key, iv.end) < 0
}

// checkIntervals enforces etcd's rule that one branch of a Txn (with its nested
// Txns) may not write a key twice: puts must be distinct and no put may fall in
// a deleted range. Of a nested Txn only one branch runs, so its two branches may
// share keys with each other but not with the ops around them. It returns the
// branch's delete ranges and put keys, nested ones included.
func checkIntervals(ops []*pb.RequestOp) (dels []interval, puts map[string]struct{}, err error) {
	puts = map[string]struct{}{}
	// Direct ops first.
	for _, op := range ops {
		switch req := op.Request.(type) {
		case *pb.RequestOp_RequestDeleteRange:
			iv := interval{start: req.RequestDeleteRange.Key}
			if len(req.RequestDeleteRange.RangeEnd) > 0 {
				iv.end = req.RequestDeleteRange.RangeEnd
			}
			dels = append(dels, iv)
		case *pb.RequestOp_RequestPut:
			k := string(req.RequestPut.Key)
			if _, dup := puts[k]; dup {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
	}
	if putInDeleted(puts, dels) {
		return nil, nil, rpctypes.ErrGRPCDuplicateKey
	}
	// Then nested Txns, each checked against everything gathered so far.
	for _, op := range ops {
		req, ok := op.Request.(*pb.RequestOp_RequestTxn)
		if !ok {
			continue
		}
		var nestedDels []interval
		nestedPuts := map[string]struct{}{}
		for _, branch := range [][]*pb.RequestOp{req.RequestTxn.Success, req.RequestTxn.Failure} {
			bDels, bPuts, err := checkIntervals(branch)
			if err != nil {
				return nil, nil, err
			}
			for k := range bPuts {
				if _, dup := puts[k]; dup {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if putInDeleted(bPuts, dels) || putInDeleted(puts, bDels) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			for k := range bPuts {
				nestedPuts[k] = struct{}{}
			}
			nestedDels = append(nestedDels, bDels...)
		}
		for k := range nestedPuts {
			puts[k] = struct{}{}
		}
		dels = append(dels, nestedDels...)
	}
	return dels, puts, nil
}

func putInDeleted(puts map[string]struct{}, dels []interval) bool {
	for k := range puts {
		for _, d := range dels {
			if d.contains([]byte(k)) {
				return true
			}
		}
	}
	return false
}
