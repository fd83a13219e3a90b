package shard

import (
	"errors"
	"fmt"

	"github.com/lni/dragonboat/v4"
)

var (
	// ErrNotLeader: the request needs the range leader and this replica is not it.
	// Returned wrapped in a *NotLeaderError, which names the leader when known.
	ErrNotLeader = errors.New("shard: not the range leader")
	// ErrTimeout: the outcome of a proposal or read is unknown.
	ErrTimeout = errors.New("shard: request timed out")
	// ErrStopped: the replica is shutting down.
	ErrStopped = errors.New("shard: replica stopped")
	// ErrStoppedUnproposed: the replica stopped (removed from its range,
	// or the node stopping) before the write was proposed, so nothing
	// changed and the write may go to the range wherever it is now. It is
	// an ErrStopped too.
	ErrStoppedUnproposed = fmt.Errorf("%w before the write was proposed", ErrStopped)
	// ErrNoLeader: the range has no leader right now; retry later.
	ErrNoLeader = errors.New("shard: no leader")
	// ErrBusy: Raft has more requests of the range in flight than it takes;
	// retry later.
	ErrBusy = errors.New("shard: too many requests in flight")
)

// raftBusy maps Dragonboat's "busy" and "not ready" refusals, which change
// nothing and are worth trying again, to ErrBusy and ErrNoLeader (keeping
// Dragonboat's text), and reports whether err was one.
func raftBusy(err error) (error, bool) {
	switch {
	case errors.Is(err, dragonboat.ErrSystemBusy):
		return fmt.Errorf("%w (%v)", ErrBusy, err), true
	case errors.Is(err, dragonboat.ErrShardNotReady):
		return fmt.Errorf("%w (%v)", ErrNoLeader, err), true
	}
	return err, false
}

// NotLeaderError says which replica leads the range, if this one knows.
type NotLeaderError struct {
	LeaderReplicaID uint64 // 0 when unknown
}

func (e *NotLeaderError) Error() string {
	if e.LeaderReplicaID == 0 {
		return ErrNotLeader.Error() + " (leader unknown)"
	}
	return fmt.Sprintf("%s (leader is replica %d)", ErrNotLeader, e.LeaderReplicaID)
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// RetryableError is a write that was not applied and may be tried again
// after a pause: the range has no leader yet, its leader changed or is
// redoing its leadership barrier, or Raft is busy. Err says which.
type RetryableError struct{ Err error }

func (e *RetryableError) Error() string { return e.Err.Error() }
func (e *RetryableError) Unwrap() error { return e.Err }

// IsRetryable reports whether err is a RetryableError.
func IsRetryable(err error) bool {
	var re *RetryableError
	return errors.As(err, &re)
}
