package meta

import (
	"errors"
	"fmt"
)

var (
	// ErrNotLeader: the request needs the meta range leader.
	ErrNotLeader = errors.New("meta: not the meta range leader")
	// ErrNoLeader: the meta range has no leader right now.
	ErrNoLeader = errors.New("meta: the meta range has no leader")
	// ErrStopped: the node is shutting down.
	ErrStopped = errors.New("meta: stopped")
	// ErrUnknownNode: no address is registered for a node.
	ErrUnknownNode = errors.New("meta: node not registered")
)

// NotLeaderError names the meta leader's node, if known.
type NotLeaderError struct{ LeaderNodeID uint64 }

func (e *NotLeaderError) Error() string {
	return fmt.Sprintf("%s (leader is node %d)", ErrNotLeader, e.LeaderNodeID)
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }
