package meta

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tesserakv/tessera/internal/rounds"
	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// highWaterReserve is how far above the numbers it hands out the leader
// raises the persisted high-water mark in one proposal, so most batches need
// no proposal, only a leadership check.
const highWaterReserve = 100_000

// Allocator hands out revisions on the meta range leader.
type Allocator struct {
	meta metaRaft
	// confirms shares leadership confirmations among batches.
	confirms rounds.Rounds
	// lease is how long after a confirmation round began batches need no
	// round of their own (0: every batch waits for one); see Allocate.
	lease time.Duration
	// renewing is set while a round started to renew the lease runs.
	renewing atomic.Bool
	stopper  *stop.Stopper

	mu sync.Mutex
	// term is the meta term in which next and limit are valid; 0 forces a
	// reload from the persisted high-water mark. Guarded by mu.
	term uint64
	// next is the next revision to hand out; every revision handed out is
	// below next. Guarded by mu.
	next int64
	// limit is the persisted high-water mark: next <= limit always, and no
	// number at or above limit has been handed out by anyone. Guarded by mu.
	limit int64
	// leaseTerm and leaseUntil: the lease, valid in leaseTerm before
	// leaseUntil. leaseEpoch counts EndLease calls; a round begun before
	// one installs no lease. Guarded by mu.
	leaseTerm  uint64
	leaseUntil time.Time
	leaseEpoch uint64
}

// NewAllocator returns an allocator over this node's meta replica; stopper
// (the node's) owns its leadership confirmations. lease is how long a
// confirmation round covers the batches reserved after it began (0 for
// none); it must be shorter than the time a meta voter that answered the
// round waits, without hearing from this leader, before it may vote for
// another candidate (Dragonboat's CheckQuorum makes that an election
// timeout), and every meta voter that restarts must wait it out before its
// replica starts.
func NewAllocator(meta metaRaft, stopper *stop.Stopper, lease time.Duration) *Allocator {
	a := &Allocator{meta: meta, lease: lease, stopper: stopper}
	a.confirms.Round, a.confirms.MinGap, a.confirms.Stopper = a.confirmRound, ConfirmRoundGap, stopper
	return a
}

// EndLease ends the leadership lease: batches wait for a round again until
// a round begun after this call succeeds. Call it before changing the meta
// range's membership or moving its leadership (a transfer makes the target
// campaign at once, whatever the other voters last heard).
func (a *Allocator) EndLease() {
	a.mu.Lock()
	a.leaseUntil = time.Time{}
	a.leaseEpoch++
	a.mu.Unlock()
}

// Reload makes the next batch read the high-water mark again, as in a new
// term: after a command raised the mark past numbers this leader would
// hand out next (RestoreCommand).
func (a *Allocator) Reload() {
	a.mu.Lock()
	a.term = 0
	a.mu.Unlock()
}

// ConfirmRoundGap is the least time between the starts of two leadership
// confirmations while they are shared by several batches
// (rounds.Rounds.MinGap).
const ConfirmRoundGap = time.Millisecond

// Allocate returns the first of count consecutive revisions, all above every
// revision handed out (by any leader) before the call began. With count 0 it
// hands out nothing and returns the next revision it would hand out. It fails with a
// *NotLeaderError on a node that does not lead the meta range.
func (a *Allocator) Allocate(ctx context.Context, count int64) (int64, error) {
	a.mu.Lock()
	leader, term, ok := a.meta.Leader()
	if !ok {
		a.mu.Unlock()
		return 0, ErrNoLeader
	}
	if leader != a.meta.NodeID() {
		a.mu.Unlock()
		return 0, &NotLeaderError{LeaderNodeID: leader}
	}
	if term != a.term {
		// A new term: the previous leader may have handed out anything below
		// the persisted mark. A linearizable read sees every entry committed
		// before it, the previous terms' included.
		out, err := a.meta.Read(ctx, true, func(st *tesserapb.MetaState) (any, error) { return st.HighWater, nil })
		if err != nil {
			a.mu.Unlock()
			return 0, err
		}
		hw := out.(int64)
		a.term, a.next, a.limit = term, hw, hw
	}
	first := a.next
	if first+count > a.limit {
		limit := first + count + highWaterReserve
		cmd := &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_SetHighWater{SetHighWater: &tesserapb.SetHighWaterCommand{Revision: limit}}}
		if err := a.meta.Propose(ctx, cmd); err != nil {
			// The mark may or may not have moved; reload it next time.
			a.term = 0
			a.mu.Unlock()
			return 0, err
		}
		a.limit = limit
	}
	// The batch is reserved now (a failure below leaves a gap, never a
	// number handed out twice). Under a lease no other leader can have been
	// elected yet, so no successor has handed out anything: the batch goes
	// out at once. Otherwise leadership is confirmed by a round begun after
	// the reservation and before the batch is handed out, shared with the
	// other batches reserved meanwhile.
	a.next = first + count
	now := time.Now()
	leased := a.leaseTerm == term && now.Before(a.leaseUntil)
	renew := leased && a.leaseUntil.Sub(now) < a.lease/2
	a.mu.Unlock()
	if leased {
		if renew {
			a.renew()
		}
		return first, nil
	}
	var err error
	if !a.meta.Sole() {
		if err = a.confirms.Wait(ctx); errors.Is(err, stop.ErrStopping) {
			err = ErrStopped
		}
	}
	if err == nil {
		if _, now, _ := a.meta.Leader(); now != term {
			err = ErrNoLeader
		}
	}
	if err != nil {
		a.mu.Lock()
		if a.term == term {
			a.term = 0
		}
		a.mu.Unlock()
		return 0, err
	}
	return first, nil
}

// confirmRound is one leadership confirmation, shared by the batches
// reserved before it began. A round that succeeds with this replica leading
// in the same term throughout extends the lease from when it began.
func (a *Allocator) confirmRound() error {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	a.mu.Lock()
	epoch := a.leaseEpoch
	a.mu.Unlock()
	start := time.Now()
	leader, term, ok := a.meta.Leader()
	if err := a.meta.ConfirmLeader(ctx); err != nil {
		return err
	}
	if after, termAfter, okAfter := a.meta.Leader(); a.lease > 0 && ok && okAfter &&
		leader == a.meta.NodeID() && after == leader && termAfter == term {
		a.mu.Lock()
		if a.leaseEpoch == epoch && (a.leaseTerm != term || start.Add(a.lease).After(a.leaseUntil)) {
			a.leaseTerm, a.leaseUntil = term, start.Add(a.lease)
		}
		a.mu.Unlock()
	}
	return nil
}

// renew starts a round in the background, unless one started for that
// still runs, so that a lease in use does not lapse.
func (a *Allocator) renew() {
	if !a.renewing.CompareAndSwap(false, true) {
		return
	}
	err := a.stopper.RunAsync(func() {
		defer a.renewing.Store(false)
		ctx, cancel := a.stopper.WithTimeout(batchTimeout)
		defer cancel()
		_ = a.confirms.Wait(ctx)
	})
	if err != nil {
		a.renewing.Store(false)
	}
}
