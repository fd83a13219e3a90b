package router

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// errorMap pairs our sentinel errors with etcd's gRPC errors, in one place.
var errorMap = []struct {
	err  error
	grpc error
}{
	{statemachine.ErrCompacted, rpctypes.ErrGRPCCompacted},
	{statemachine.ErrFutureRev, rpctypes.ErrGRPCFutureRev},
	{statemachine.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound},
	{statemachine.ErrLeaseExists, rpctypes.ErrGRPCLeaseExist},
	{statemachine.ErrKeyNotFound, rpctypes.ErrGRPCKeyNotFound},
	{statemachine.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey},
	{statemachine.ErrEmptyKey, rpctypes.ErrGRPCEmptyKey},
	{shard.ErrTimeout, rpctypes.ErrGRPCTimeout},
	{shard.ErrNotLeader, rpctypes.ErrGRPCNoLeader},
	{shard.ErrNoLeader, rpctypes.ErrGRPCNoLeader},
	{shard.ErrStopped, rpctypes.ErrGRPCStopped},
	{shard.ErrBusy, rpctypes.ErrGRPCRequestTooManyRequests},
	{statemachine.ErrStaleRevision, rpctypes.ErrGRPCLeaderChanged},
	{statemachine.ErrStaleLeader, rpctypes.ErrGRPCLeaderChanged},
	{statemachine.ErrLeaseProofOld, status.Error(codes.Unavailable, "tessera: leases were revoked on the key's range while the lease was being attached to it; retry")},
	{statemachine.ErrWrongRange, status.Error(codes.Unavailable, "tessera: the range's bounds changed (a split) while the request was routed; retry")},
	{statemachine.ErrUnavailable, status.Error(codes.Unavailable, "tessera: the range's replica on this node is closed (moved away) or recovering from a snapshot; retry")},
	{ErrNoRange, status.Error(codes.Unavailable, "tessera: no range holds the key on this node yet (a split is being applied); retry")},
	{meta.ErrUnknownNode, status.Error(codes.Unavailable, "tessera: another member's address is not known here yet (it is starting); retry")},
}

// ToGRPC maps an internal error to the gRPC error etcd would return.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, m := range errorMap {
		if errors.Is(err, m.err) {
			return m.grpc
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return rpctypes.ErrGRPCDeadlineExceeded
	}
	return status.Error(codes.Unknown, err.Error())
}
