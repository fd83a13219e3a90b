package shard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// GrantLease records a lease through Raft and starts its timer on this leader.
func (r *Replica) GrantLease(ctx context.Context, id, ttlSeconds int64) (*tesserapb.Result, error) {
	cmd := &tesserapb.Command{Op: &tesserapb.Command_LeaseGrant{LeaseGrant: &tesserapb.LeaseGrantCommand{Id: id, TtlSeconds: ttlSeconds, TrackSpans: true}}}
	res, err := r.Write(ctx, cmd, false)
	if err == nil {
		r.leases.grant(id, ttlSeconds, time.Now())
	}
	return res, err
}

// RevokeLease deletes a lease's record on this range and every key of the
// range attached to it, at one revision, and drops the lease from the clock.
// A range without the record applies it too.
func (r *Replica) RevokeLease(ctx context.Context, id int64) (*tesserapb.Result, error) {
	cmd := &tesserapb.Command{Op: &tesserapb.Command_LeaseRevoke{LeaseRevoke: &tesserapb.LeaseRevokeCommand{Id: id, WithoutRecord: true}}}
	res, err := r.Write(ctx, cmd, true)
	if err == nil || errors.Is(err, statemachine.ErrLeaseNotFound) {
		r.leases.remove(id)
	}
	return res, err
}

// MarkLease marks a lease as being revoked (on the home range), so that no
// key attaches to it and no range is given its record any more, and returns
// its record; its timer stops being renewed and falls due again after
// retryAfter, for the case the revocation stops part-way. An unknown lease's
// timer is dropped.
func (r *Replica) MarkLease(ctx context.Context, id int64, retryAfter time.Duration) (*tesserapb.LeaseRecord, error) {
	cmd := &tesserapb.Command{Op: &tesserapb.Command_LeaseMark{LeaseMark: &tesserapb.LeaseMarkCommand{Id: id}}}
	res, err := r.Write(ctx, cmd, false)
	if errors.Is(err, statemachine.ErrLeaseNotFound) {
		r.leases.remove(id)
	}
	if err != nil {
		return nil, err
	}
	r.leases.revoking(id, time.Now().Add(retryAfter))
	rec := &tesserapb.LeaseRecord{}
	if err := proto.Unmarshal(res.GetResponse(), rec); err != nil {
		return nil, fmt.Errorf("shard: decoding the record of lease %d: %w", id, err)
	}
	return rec, nil
}

// RenewLease restarts a lease's timer; only the range leader can. It returns the
// lease's TTL, or statemachine.ErrLeaseNotFound.
func (r *Replica) RenewLease(ctx context.Context, id int64) (int64, error) {
	if err := r.leaderReady(ctx); err != nil {
		return 0, err
	}
	ttl, ok := r.leases.renew(id, time.Now())
	if !ok {
		return 0, statemachine.ErrLeaseNotFound
	}
	return ttl, nil
}

// LeaseRemaining returns the seconds left on a lease as the leader's clock
// has them; only the range leader knows.
func (r *Replica) LeaseRemaining(ctx context.Context, id int64) (int64, error) {
	if err := r.leaderReady(ctx); err != nil {
		return 0, err
	}
	left, ok := r.leases.remaining(id, time.Now())
	if !ok {
		return 0, statemachine.ErrLeaseNotFound
	}
	return left, nil
}

// leaderReady returns nil once this replica leads the range and has applied
// its leadership barrier (so its lease clock is loaded).
func (r *Replica) leaderReady(ctx context.Context) error {
	leader, term, ok := r.Leader()
	if !ok || leader != r.cfg.ReplicaID {
		return r.notLeader()
	}
	if r.readyTerm.Load() == term {
		return nil
	}
	// A barrier makes this replica ready; proposing one through the queue does it.
	_, err := r.writeRetrying(ctx, &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{}}})
	return err
}

// leaseLoop revokes expired leases while this replica leads the range. It runs
// only on a range configured to keep the lease clock (Config.ExpireLeases).
func (r *Replica) leaseLoop() {
	tick := time.NewTicker(r.cfg.LeaseCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.stopper.ShouldQuiesce():
			return
		case <-tick.C:
		}
		if !r.IsLeader() {
			// The clock is loaded again, with full TTLs, by the barrier of
			// the next term this replica leads in.
			r.leases.demote()
			r.readyTerm.Store(0)
			continue
		}
		if !r.leases.isActive() {
			// Becoming ready loads the clock; do it even without client writes.
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RequestTimeout)
			_ = r.leaderReady(ctx)
			cancel()
			continue
		}
		for _, id := range r.leases.expired(time.Now()) {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RequestTimeout)
			var err error
			if r.cfg.RevokeExpired != nil {
				err = r.cfg.RevokeExpired(ctx, id)
			} else {
				_, err = r.RevokeLease(ctx, id)
			}
			cancel()
			if err != nil && !errors.Is(err, statemachine.ErrLeaseNotFound) {
				r.cfg.Logger.Warn("revoking expired lease failed", "range", r.cfg.RangeID, "lease", id, "err", err)
				break
			}
		}
	}
}
