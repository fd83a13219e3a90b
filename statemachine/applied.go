package statemachine

import (
	"context"
	"sync"
)

// appliedWaiter lets readers wait for a range replica to reach an applied
// index: a follower serving a linearizable read waits for the index its
// leader answered. Waiters share one channel, closed and replaced whenever
// the index moves, so an Update with nobody waiting costs a lock.
type appliedWaiter struct {
	mu     sync.Mutex
	index  uint64
	closed bool
	moved  chan struct{} // nil while nobody waits
}

// advance records that the replica has applied index (everything before it
// included, its events published) and wakes the waiters.
func (w *appliedWaiter) advance(index uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.index = max(w.index, index)
	w.wakeLocked()
}

// close wakes the waiters for good: the replica stopped.
func (w *appliedWaiter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	w.wakeLocked()
}

func (w *appliedWaiter) wakeLocked() {
	if w.moved != nil {
		close(w.moved)
		w.moved = nil
	}
}

// wait returns once the replica has applied index, or the replica closed
// (ErrUnavailable), or ctx ended.
func (w *appliedWaiter) wait(ctx context.Context, index uint64) error {
	for {
		w.mu.Lock()
		if w.index >= index {
			w.mu.Unlock()
			return nil
		}
		if w.closed {
			w.mu.Unlock()
			return ErrUnavailable
		}
		if w.moved == nil {
			w.moved = make(chan struct{})
		}
		moved := w.moved
		w.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitApplied returns once this replica has applied the entry at index and
// everything before it (and published their events), or ctx ends, or the
// replica closes (ErrUnavailable).
func (r *RangeSM) WaitApplied(ctx context.Context, index uint64) error {
	return r.applied.wait(ctx, index)
}
