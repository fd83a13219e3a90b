package router

import (
	"bytes"
	"cmp"
	"slices"
	"sync"

	"github.com/google/btree"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// RangeCache maps keys to ranges, ordered by start key (a google/btree):
// this node's replicas by their own applied bounds, and the keys no replica
// here holds by the meta range's descriptors (remoteRange). It is rebuilt
// whenever the node's set of ranges or their bounds change (a split), and on
// demand when a range answers that a key is no longer its own, reading the
// descriptors afresh.
type RangeCache struct {
	mu sync.RWMutex
	// tree holds one entry per range, by start key. Guarded by mu.
	tree *btree.BTreeG[rangeEntry]
	// all lists the local replicas the tree was built from. Guarded by mu.
	all []Range
	// descriptors reads the meta range's descriptors (nil: none yet).
	descriptors func() []*tesserapb.RangeDescriptor
	// descs are the descriptors last read. Guarded by mu.
	descs []*tesserapb.RangeDescriptor
	// remote holds the ranges in the tree that no local replica holds, by
	// ID. Guarded by mu.
	remote map[uint64]*remoteRange
}

type rangeEntry struct {
	start, end []byte // end nil: to the end of the keyspace
	gen        uint64 // the generation of start and end
	rng        Range
}

func lessByStart(a, b rangeEntry) bool { return bytes.Compare(a.start, b.start) < 0 }

// NewRangeCache returns an empty cache.
func NewRangeCache() *RangeCache {
	return &RangeCache{tree: btree.NewG(8, lessByStart)}
}

// Set replaces the cache's replicas and rebuilds the index from their bounds.
func (c *RangeCache) Set(ranges []Range) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append([]Range(nil), ranges...)
	c.rebuildLocked()
}

// SetDescriptors gives the cache where to read the meta range's range
// descriptors from (each Refresh reads them), and reads them.
func (c *RangeCache) SetDescriptors(read func() []*tesserapb.RangeDescriptor) {
	c.mu.Lock()
	c.descriptors = read
	c.mu.Unlock()
	c.Refresh()
}

// Refresh rebuilds the index from the replicas' current bounds and the
// meta range's current descriptors.
func (c *RangeCache) Refresh() {
	c.mu.RLock()
	read := c.descriptors
	c.mu.RUnlock()
	var descs []*tesserapb.RangeDescriptor
	if read != nil {
		descs = read()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if read != nil {
		c.descs = descs
	}
	c.rebuildLocked()
}

func (c *RangeCache) rebuildLocked() {
	c.tree.Clear(false)
	local := make(map[uint64]bool, len(c.all))
	for _, r := range c.all {
		// A replica not open yet has no bounds: its keys are a hole until it
		// opens and the cache is refreshed (a starting replica, a split's
		// new range) — except a new member of a range waiting for its first
		// snapshot, whose keys go to the range's replicas elsewhere.
		if j, ok := r.(interface{ Joining() bool }); ok && j.Joining() {
			continue
		}
		local[r.RangeID()] = true
		gen := r.Generation()
		if start, end, ok := r.Bounds(); ok {
			c.tree.ReplaceOrInsert(rangeEntry{start: start, end: end, gen: gen, rng: r})
		}
	}
	// The keys no local replica holds go to the ranges the descriptors
	// name, the newest generation first where recorded descriptors overlap
	// (right after a split, the parent's old record beside the child's).
	descs := slices.Clone(c.descs)
	slices.SortStableFunc(descs, func(a, b *tesserapb.RangeDescriptor) int { return cmp.Compare(b.Generation, a.Generation) })
	remote := make(map[uint64]*remoteRange)
	for _, d := range descs {
		if local[d.RangeId] || len(d.ReplicaNodeIds) == 0 {
			continue
		}
		m := newRemoteRange(d)
		start, end, _ := m.Bounds()
		if c.overlapsLocked(start, end) {
			continue
		}
		if old := c.remote[d.RangeId]; old != nil && proto.Equal(old.desc, d) {
			m = old // keeps the leader it learned
		}
		c.tree.ReplaceOrInsert(rangeEntry{start: start, end: end, gen: d.Generation, rng: m})
		remote[d.RangeId] = m
	}
	c.remote = remote
}

// overlapsLocked reports whether an entry of the tree holds keys of [start,
// end) (end nil: to the end of the keyspace).
func (c *RangeCache) overlapsLocked(start, end []byte) bool {
	overlaps := false
	c.tree.DescendLessOrEqual(rangeEntry{start: start}, func(e rangeEntry) bool {
		overlaps = e.end == nil || bytes.Compare(e.end, start) > 0
		return false
	})
	if overlaps {
		return true
	}
	c.tree.AscendGreaterOrEqual(rangeEntry{start: start}, func(e rangeEntry) bool {
		overlaps = end == nil || bytes.Compare(e.start, end) < 0
		return false
	})
	return overlaps
}

// current reports whether the index covers the whole keyspace with the
// bounds every replica has applied: no replica's bounds changed since the
// index was built (a split applied here) and no keys lack a range (the
// range a split made is open here).
func (c *RangeCache) current() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	next := []byte{}
	ok := true
	c.tree.Ascend(func(e rangeEntry) bool {
		if !bytes.Equal(e.start, next) || e.stale() {
			ok = false
			return false
		}
		next = e.end
		return next != nil
	})
	return ok && next == nil
}

// byID returns the local replica of a range, or nil.
func (c *RangeCache) byID(rangeID uint64) Range {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, r := range c.all {
		if r.RangeID() == rangeID {
			return r
		}
	}
	return nil
}

// list returns the cache's local replicas and the ranges held elsewhere
// that it routes to.
func (c *RangeCache) list() []Range {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := append([]Range(nil), c.all...)
	for _, m := range c.remote {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Range) int { return cmp.Compare(a.RangeID(), b.RangeID()) })
	return out
}

// Local reports whether this node holds a replica of the range.
func (c *RangeCache) Local(rangeID uint64) bool { return c.byID(rangeID) != nil }

// Remote returns the descriptor by which the cache routes to a range that
// no local replica holds, or nil.
func (c *RangeCache) Remote(rangeID uint64) *tesserapb.RangeDescriptor {
	if m := c.remoteByID(rangeID); m != nil {
		return m.desc
	}
	return nil
}

// remoteByID returns the entry by which the cache routes to a range that
// no local replica holds, or nil.
func (c *RangeCache) remoteByID(rangeID uint64) *remoteRange {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.remote[rangeID]
}

// lookup returns the range holding key, or nil.
func (c *RangeCache) lookup(key []byte) Range {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var found Range
	c.tree.DescendLessOrEqual(rangeEntry{start: key}, func(e rangeEntry) bool {
		if (e.end == nil || bytes.Compare(key, e.end) < 0) && !e.stale() {
			found = e.rng
		}
		return false
	})
	return found
}

// stale reports whether the entry's replica has applied a split since the
// index was built: its bounds in the index are wider than the keys it holds
// now, and the keys it gave away are a hole until the index is rebuilt.
// (The watch hub counts a range's published floor for the keys the index
// gives it; a floor published after the split says nothing of the keys the
// split moved.)
func (e rangeEntry) stale() bool { return e.rng.Generation() != e.gen }

// span is one range's part of a key interval.
type span struct {
	rng        Range
	key, end   []byte // the part in etcd's form: end nil for a single key, "\x00" for to the end
	rangeStart []byte
}

// overlapping returns the ranges that hold keys of etcd's interval [key,
// rangeEnd) in key order, each with the interval clipped to its bounds. ok is
// false when some part of the interval has no range (the cache is being
// rebuilt); the caller refreshes and retries.
func (c *RangeCache) overlapping(key, rangeEnd []byte) (spans []span, ok bool) {
	if len(rangeEnd) == 0 {
		r := c.lookup(key)
		if r == nil {
			return nil, false
		}
		start, _, _ := r.Bounds()
		return []span{{rng: r, key: key, rangeStart: start}}, true
	}
	toEnd := len(rangeEnd) == 1 && rangeEnd[0] == 0
	if !toEnd && bytes.Compare(key, rangeEnd) >= 0 {
		// An empty interval: whichever range holds key answers it (nothing).
		r := c.lookup(key)
		if r == nil {
			return nil, false
		}
		return []span{{rng: r, key: key, end: rangeEnd}}, true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	// Start from the range holding key.
	from := rangeEntry{start: key}
	c.tree.DescendLessOrEqual(from, func(e rangeEntry) bool {
		from = e
		return false
	})
	next := key
	ok = true
	c.tree.AscendGreaterOrEqual(from, func(e rangeEntry) bool {
		if e.end != nil && bytes.Compare(e.end, next) <= 0 {
			return true // ends before the part still to cover
		}
		if !toEnd && bytes.Compare(e.start, rangeEnd) >= 0 {
			return false
		}
		if bytes.Compare(e.start, next) > 0 || e.stale() {
			ok = false // a hole
			return false
		}
		sp := span{rng: e.rng, key: next, rangeStart: e.start}
		switch {
		case e.end == nil:
			sp.end = rangeEnd
		case toEnd || bytes.Compare(e.end, rangeEnd) < 0:
			sp.end = e.end
		default:
			sp.end = rangeEnd
		}
		spans = append(spans, sp)
		if e.end == nil || (!toEnd && bytes.Compare(e.end, rangeEnd) >= 0) {
			next = nil
			return false
		}
		next = e.end
		return true
	})
	if next != nil {
		ok = false
	}
	return spans, ok && len(spans) > 0
}

// Len is how many ranges the cache routes to.
func (c *RangeCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tree.Len()
}
