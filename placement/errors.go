package placement

import (
	"errors"
	"fmt"
)

var (
	// ErrNotMetaLeader: the request needs the meta range leader.
	ErrNotMetaLeader = errors.New("placement: not the meta range leader")
	// ErrNoMetaLeader: the meta range has no leader right now.
	ErrNoMetaLeader = errors.New("placement: the meta range has no leader")
	// ErrStopped: the node is shutting down.
	ErrStopped = errors.New("placement: stopped")
	// ErrUnknownNode: no address is registered for a node.
	ErrUnknownNode = errors.New("placement: node not registered")
)

// NotMetaLeaderError names the meta leader's node, if known.
type NotMetaLeaderError struct{ LeaderNodeID uint64 }

func (e *NotMetaLeaderError) Error() string {
	return fmt.Sprintf("%s (leader is node %d)", ErrNotMetaLeader, e.LeaderNodeID)
}

func (e *NotMetaLeaderError) Unwrap() error { return ErrNotMetaLeader }
