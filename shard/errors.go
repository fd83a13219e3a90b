package shard

import (
	"errors"
	"fmt"
)

var (
	// ErrNotLeader: the request needs the range leader and this replica is not it.
	// Returned wrapped in a *NotLeaderError, which names the leader when known.
	ErrNotLeader = errors.New("shard: not the range leader")
	// ErrTimeout: the outcome of a proposal or read is unknown.
	ErrTimeout = errors.New("shard: request timed out")
	// ErrStopped: the replica is shutting down.
	ErrStopped = errors.New("shard: replica stopped")
	// ErrNoLeader: the range has no leader right now; retry later.
	ErrNoLeader = errors.New("shard: no leader")
)

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
