package shard

import (
	"sort"
	"sync"
	"time"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// leaseClock is the leader's in-memory view of when each lease expires. It has
// no goroutines and no clock of its own: callers pass now. Only the range leader
// holds an active clock; followers keep it inactive and empty.
//
// A new leader gives every lease its full TTL again (promote), as etcd does, so a
// leader change never kills a lease early; leases may live up to one TTL longer.
type leaseClock struct {
	mu sync.Mutex
	// active is true while this replica is the leader that expires leases.
	active bool // guarded by mu
	// leases maps lease ID to its TTL and deadline; guarded by mu.
	leases map[int64]leaseTimer
}

type leaseTimer struct {
	ttlSeconds int64
	deadline   time.Time
	// revoking: the lease's revocation has begun; it is not renewed, and at
	// its deadline the revocation is tried again (in case it stopped).
	revoking bool
}

func newLeaseClock() *leaseClock { return &leaseClock{leases: map[int64]leaseTimer{}} }

// promote activates the clock with every lease's full TTL from now; the
// leases whose revocation had begun are due at once.
func (c *leaseClock) promote(recs []*tesserapb.LeaseRecord, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active = true
	c.leases = make(map[int64]leaseTimer, len(recs))
	for _, rec := range recs {
		t := leaseTimer{ttlSeconds: rec.TtlSeconds, deadline: now.Add(time.Duration(rec.TtlSeconds) * time.Second)}
		if rec.Revoking {
			t.revoking, t.deadline = true, now
		}
		c.leases[rec.Id] = t
	}
}

// revoking records that a lease's revocation has begun: it is no longer
// renewed or reported, and falls due again at retryAt.
func (c *leaseClock) revoking(id int64, retryAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, found := c.leases[id]; found && c.active {
		t.revoking, t.deadline = true, retryAt
		c.leases[id] = t
	}
}

// demote deactivates the clock and forgets every deadline.
func (c *leaseClock) demote() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active = false
	c.leases = map[int64]leaseTimer{}
}

func (c *leaseClock) isActive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

// grant starts a lease's timer (no-op on an inactive clock).
func (c *leaseClock) grant(id, ttlSeconds int64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active {
		c.leases[id] = leaseTimer{ttlSeconds: ttlSeconds, deadline: now.Add(time.Duration(ttlSeconds) * time.Second)}
	}
}

// renew restarts a lease's timer and returns its TTL; ok is false if the lease
// is unknown or already expired (an expired lease is being revoked).
func (c *leaseClock) renew(id int64, now time.Time) (ttlSeconds int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, found := c.leases[id]
	if !c.active || !found || t.revoking || !now.Before(t.deadline) {
		return 0, false
	}
	t.deadline = now.Add(time.Duration(t.ttlSeconds) * time.Second)
	c.leases[id] = t
	return t.ttlSeconds, true
}

// remove forgets a lease (revoked).
func (c *leaseClock) remove(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.leases, id)
}

// remaining returns the whole seconds left on a lease (etcd rounds up),
// ok false if unknown.
func (c *leaseClock) remaining(id int64, now time.Time) (seconds int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, found := c.leases[id]
	if !c.active || !found || t.revoking {
		return 0, false
	}
	left := t.deadline.Sub(now)
	if left <= 0 {
		return 0, true
	}
	return int64((left + time.Second - 1) / time.Second), true
}

// expired returns the IDs of leases whose deadline has passed, in ID order.
func (c *leaseClock) expired(now time.Time) []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []int64
	if !c.active {
		return nil
	}
	for id, t := range c.leases {
		if !now.Before(t.deadline) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
