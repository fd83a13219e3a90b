package statemachine

import (
	"bytes"
	"sort"
	"sync"
)

// countCache makes etcd's count cheap for paginated lists. A page asks for
// limit keys of [key, end) at revision R plus the count of all of them, and
// the next page asks again from just after the last key, at the same R. The
// live keys of [key, end) at a past revision R never change (later writes
// have larger revisions, and compaction keeps every version live at R >= the
// compacted revision; reads below it fail), so once one page has counted to
// the end of the interval, the cache remembers, at every checkpointEvery-th
// key, how many live keys lie from there to the end, and later pages count
// only up to the next checkpoint.
//
// Only reads from a View use it (never the reads inside a Txn, which see the
// command's own unapplied writes), and only at revisions the view can answer
// completely (at or below its revision), so entries are facts about the
// node's data at R, whatever range read them.
type countCache struct {
	mu sync.Mutex
	// entries by (revision, interval end); order is insertion order, for
	// eviction. Guarded by mu.
	entries map[countKey]*countCheckpoints
	order   []countKey
}

type countKey struct {
	rev int64
	end string // the request's range_end, as given
}

// countCheckpoints: counts[i] is the number of live keys in [keys[i], end) at
// the entry's revision; keys ascend, and each is a live key.
type countCheckpoints struct {
	keys   [][]byte
	counts []int64
}

const (
	checkpointEvery  = 1024
	countCacheMaxLen = 64
)

func newCountCache() *countCache { return &countCache{entries: map[countKey]*countCheckpoints{}} }

// lookup returns the checkpoints for (rev, end), or nil.
func (c *countCache) lookup(rev int64, end []byte) *countCheckpoints {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[countKey{rev, string(end)}]
}

// store records the checkpoints of a count that ran from keys[0] to the end
// of the interval, unless a count from an earlier start is already known.
func (c *countCache) store(rev int64, end []byte, cp *countCheckpoints) {
	if c == nil || len(cp.keys) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := countKey{rev, string(end)}
	if old, ok := c.entries[k]; ok {
		if bytes.Compare(old.keys[0], cp.keys[0]) <= 0 {
			return
		}
	} else {
		c.order = append(c.order, k)
	}
	c.entries[k] = cp
	for len(c.order) > countCacheMaxLen {
		delete(c.entries, c.order[0])
		c.order = c.order[1:]
	}
}

// next returns the first checkpoint at or after key: its key and the count
// from it to the end; ok false when there is none.
func (cp *countCheckpoints) next(key []byte) (cpKey []byte, countFrom int64, ok bool) {
	if cp == nil {
		return nil, 0, false
	}
	i := sort.Search(len(cp.keys), func(i int) bool { return bytes.Compare(cp.keys[i], key) >= 0 })
	if i == len(cp.keys) {
		return nil, 0, false
	}
	return cp.keys[i], cp.counts[i], true
}

// countRecorder collects checkpoints while a count scans to the end.
type countRecorder struct {
	keys    [][]byte
	indexes []int64
}

func (r *countRecorder) visit(index int64, key []byte) {
	if index%checkpointEvery == 0 {
		r.keys = append(r.keys, bytes.Clone(key))
		r.indexes = append(r.indexes, index)
	}
}

// finish turns the recorded positions into counts to the end, given the
// number of keys the scan visited in all.
func (r *countRecorder) finish(total int64) *countCheckpoints {
	cp := &countCheckpoints{keys: r.keys, counts: make([]int64, len(r.indexes))}
	for i, idx := range r.indexes {
		cp.counts[i] = total - idx
	}
	return cp
}
