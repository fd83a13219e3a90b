package shard

import (
	"context"
	"errors"

	"github.com/tesserakv/tessera/statemachine"
)

// ReadAt is a linearizable read of this range at revision rev, a revision the
// caller took from the oracle after its request arrived (docs/design.md,
// "Read fence"). On the range leader it raises the fence to rev, waits until
// every write this leader admitted at or below rev is settled, confirms
// leadership with a ReadIndex, and runs fn on a view in which rev is readable
// (View.AssumeClosed). If leadership moved meanwhile, it retries; elsewhere it
// fails with a *NotLeaderError so the caller can go to the leader.
func (r *Replica) ReadAt(ctx context.Context, rev int64, fn func(*statemachine.View) (any, error)) (any, error) {
	return retrying(r, ctx, func() (any, error, bool) { return r.readAtOnce(ctx, rev, fn) })
}

func (r *Replica) readAtOnce(ctx context.Context, rev int64, fn func(*statemachine.View) (any, error)) (out any, err error, retry bool) {
	if err := r.leaderReady(ctx); err != nil {
		var nl *NotLeaderError
		if errors.As(err, &nl) && nl.LeaderReplicaID == 0 {
			return nil, ErrNoLeader, true
		}
		return nil, err, false
	}
	_, term, _ := r.Leader()
	if err := r.waitSettled(ctx, r.fence.raise(rev)); err != nil {
		return nil, err, false
	}
	out, err, retry = r.confirmedRead(ctx, func(v *statemachine.View) (any, error) {
		if err := v.AssumeClosed(rev); err != nil {
			return nil, err
		}
		return fn(v)
	})
	if errors.Is(err, statemachine.ErrRangeHeld) {
		// A write spanning ranges holds the range: read once it has
		// committed or aborted here.
		return nil, err, true
	}
	if err != nil {
		return nil, err, retry
	}
	// The ReadIndex must have been confirmed by this replica as leader in the
	// term the fence was raised in; otherwise another leader may have taken
	// writes at or below rev.
	if leader, now, ok := r.Leader(); !ok || leader != r.cfg.ReplicaID || now != term {
		return nil, ErrNoLeader, true
	}
	if repeat := r.cfg.RepeatRead; repeat != nil && repeat() {
		return nil, ErrNoLeader, true
	}
	return out, nil, false
}

// FenceIndex is the leader's half of a read at rev that another replica of
// the range serves (ReadAfter there): what ReadAt does before reading, and
// it returns the applied index of a view in which every write at or below
// rev is applied. Elsewhere it fails with a *NotLeaderError.
func (r *Replica) FenceIndex(ctx context.Context, rev int64) (uint64, error) {
	out, err := r.ReadAt(ctx, rev, func(v *statemachine.View) (any, error) { return v.AppliedIndex(), nil })
	if err != nil {
		return 0, err
	}
	return out.(uint64), nil
}

// ReadAfter is a linearizable read at rev on any replica: index is what the
// range leader's FenceIndex answered for a revision at or above rev, taken
// after the request arrived. Once this replica has applied index it holds
// every write at or below rev, and every write it applies later is above
// rev, so fn runs on a view in which rev is readable (View.AssumeClosed).
func (r *Replica) ReadAfter(ctx context.Context, index uint64, rev int64, fn func(*statemachine.View) (any, error)) (any, error) {
	rsm := r.store.Range(r.cfg.RangeID)
	if rsm == nil {
		return nil, ErrStopped
	}
	for {
		if err := rsm.WaitApplied(ctx, index); err != nil {
			return nil, err
		}
		var applied uint64
		out, err := r.localRead(func(v *statemachine.View) (any, error) {
			if applied = v.AppliedIndex(); applied < index {
				// A snapshot being installed replaced the state meanwhile.
				return nil, ErrTimeout
			}
			if err := v.AssumeClosed(rev); err != nil {
				return nil, err
			}
			return fn(v)
		})
		if !errors.Is(err, statemachine.ErrRangeHeld) {
			return out, err
		}
		// Held by a write spanning ranges: its outcome is a later entry.
		index = applied + 1
	}
}

// Fence raises this leader's fence to rev without reading: from then on every
// write to the range takes a revision above rev. A compaction at rev does this
// before it is proposed.
func (r *Replica) Fence(ctx context.Context, rev int64) error {
	if err := r.leaderReady(ctx); err != nil {
		return err
	}
	r.fence.raise(rev)
	return nil
}

func (r *Replica) waitSettled(ctx context.Context, waits []<-chan struct{}) error {
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.stopper.ShouldQuiesce():
			return ErrStopped
		}
	}
	return nil
}
