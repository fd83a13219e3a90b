package node

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/lni/dragonboat/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
)

// TestMetaError: a meta request that did not go through answers with
// etcd's error for its cause, never gRPC's Unknown.
func TestMetaError(t *testing.T) {
	for in, want := range map[error]error{
		dragonboat.ErrTimeoutTooSmall: rpctypes.ErrGRPCTimeout,
		fmt.Errorf("%w (last error: %v)", context.DeadlineExceeded, dragonboat.ErrShardNotReady): rpctypes.ErrGRPCTimeout,
		dragonboat.ErrShardNotReady:  rpctypes.ErrGRPCNoLeader,
		meta.ErrNoLeader:             rpctypes.ErrGRPCNoLeader,
		context.Canceled:             rpctypes.ErrGRPCCanceled,
		rpctypes.ErrGRPCUserNotFound: rpctypes.ErrGRPCUserNotFound,
	} {
		if got := metaError(in); !errors.Is(got, want) {
			t.Errorf("metaError(%v) = %v, want %v", in, got, want)
		}
	}
	if got := metaError(errors.New("disk on fire")); status.Code(got) != codes.Unavailable {
		t.Errorf("metaError of another error = %v, want Unavailable", got)
	}
}
