package router

import (
	"sync"
	"time"
)

// contendedFor is how long a range counts as contended after a write
// spanning ranges met another's hold on it: writes touching it meanwhile
// take their holds in key order from their first attempt, rather than hold
// every range at once, meet a hold and undo the others.
const contendedFor = time.Second

// contention records when writes spanning ranges last met another's hold,
// by range.
type contention struct {
	mu   sync.Mutex
	last map[uint64]time.Time
}

// met records a hold met on range id now.
func (c *contention) met(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		c.last = map[uint64]time.Time{}
	}
	now := time.Now()
	c.last[id] = now
	// Forget the ranges no longer contended, so the map stays small.
	for k, t := range c.last {
		if now.Sub(t) > contendedFor {
			delete(c.last, k)
		}
	}
}

// any reports whether one of ranges met a hold within contendedFor.
func (c *contention) any(ranges []Range) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for _, rng := range ranges {
		if t, ok := c.last[rng.RangeID()]; ok && now.Sub(t) <= contendedFor {
			return true
		}
	}
	return false
}
