package shard

import (
	"errors"
	"testing"

	"github.com/lni/dragonboat/v4"
)

// TestRaftBusy: Dragonboat's busy and not-ready refusals become ErrBusy and
// ErrNoLeader, to be tried again; anything else is left as it is.
func TestRaftBusy(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
		busy bool
	}{
		{dragonboat.ErrSystemBusy, ErrBusy, true},
		{dragonboat.ErrShardNotReady, ErrNoLeader, true},
		{dragonboat.ErrTimeout, dragonboat.ErrTimeout, false},
		{ErrStopped, ErrStopped, false},
	} {
		got, busy := raftBusy(c.err)
		if !errors.Is(got, c.want) || busy != c.busy {
			t.Errorf("raftBusy(%v) = %v, %v; want %v, %v", c.err, got, busy, c.want, c.busy)
		}
	}
}
