// Package rounds shares confirmation rounds among the callers that need one.
//
// A linearizable read on a Raft leader, and a revision handed out by the
// meta leader, must be preceded by a round that confirms leadership (a
// ReadIndex: a heartbeat to every follower and a quorum of answers) begun
// after the caller asked. Dragonboat shares a heartbeat only among the
// ReadIndex requests of one step of its worker, which under load is one or
// two. Rounds runs one round at a time; the callers that arrive meanwhile
// share the next one, as etcd's linearizable read loop does. Under
// concurrent load (the last round served more than one caller) the next
// round also waits until MinGap has passed since the last one began, so that
// more callers share it; a lone caller never waits for the gap.
package rounds

import (
	"context"
	"sync"
	"time"

	"github.com/tesserakv/tessera/internal/stop"
)

// Rounds runs Round for its callers. The zero value is not usable: set
// Round and Stopper (and MinGap) before the first Wait.
type Rounds struct {
	// Round makes one round; its error is every sharing caller's. It runs
	// without any caller's context (its callers may give up; the round is
	// bounded by its own deadline).
	Round func() error
	// MinGap is the least time between the starts of two rounds while
	// rounds are shared (0: none).
	MinGap time.Duration
	// Stopper owns the goroutine that runs the rounds: once it stops, Wait
	// fails with stop.ErrStopping instead of starting one.
	Stopper *stop.Stopper

	mu      sync.Mutex
	running bool
	next    *round // the callers waiting for the next round; nil if none
	// lastStart and lastShared describe the last round begun (guarded by
	// mu; read by the runner only).
	lastStart  time.Time
	lastShared int
}

type round struct {
	callers int
	done    chan struct{}
	err     error
}

// Wait returns the error of a round begun after Wait was called, or ctx's
// error if ctx ends first.
func (r *Rounds) Wait(ctx context.Context) error {
	r.mu.Lock()
	if r.next == nil {
		r.next = &round{done: make(chan struct{})}
	}
	b := r.next
	b.callers++
	if !r.running {
		// Not running, so b was made just now and this caller is its only one.
		if err := r.Stopper.RunAsync(r.run); err != nil {
			r.next = nil
			r.mu.Unlock()
			return err
		}
		r.running = true
	}
	r.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run makes the rounds until no caller waits.
func (r *Rounds) run() {
	for {
		r.mu.Lock()
		if r.next == nil {
			r.running = false
			r.mu.Unlock()
			return
		}
		wait := time.Duration(0)
		if r.lastShared > 1 && r.MinGap > 0 {
			wait = r.MinGap - time.Since(r.lastStart)
		}
		r.mu.Unlock()
		if wait > 0 {
			// Callers arriving meanwhile join the round about to begin.
			time.Sleep(wait)
		}
		r.mu.Lock()
		b := r.next
		r.next = nil
		r.lastStart, r.lastShared = time.Now(), b.callers
		r.mu.Unlock()
		b.err = r.Round()
		close(b.done)
	}
}
