package router

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/shard"
)

// TestLeaderHint: the leader a forwarded write's refusal names is read back
// from shard's own error text as RangeWrite sends it, and nothing is read
// from refusals that name none.
func TestLeaderHint(t *testing.T) {
	for _, c := range []struct {
		err  error
		want uint64
	}{
		{status.Error(codes.FailedPrecondition, (&shard.NotLeaderError{LeaderReplicaID: 3}).Error()), 3},
		{status.Error(codes.FailedPrecondition, (&shard.NotLeaderError{LeaderReplicaID: 12}).Error()), 12},
		{status.Error(codes.FailedPrecondition, (&shard.NotLeaderError{}).Error()), 0},
		{status.Error(codes.FailedPrecondition, "tessera: range 4 is not on this node"), 0},
		{errors.New("not a status"), 0},
	} {
		if got := leaderHint(c.err); got != c.want {
			t.Errorf("leaderHint(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
