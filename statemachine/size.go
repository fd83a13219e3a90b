package statemachine

import (
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// SizeBytes estimates the bytes the range's data takes: what Pebble's
// sstables hold of its keys, plus the encoded size of the batches committed
// for it that are still in the memtables (EstimateDiskUsage does not see
// those: right after a load of a few megabytes a range would show 0 bytes).
func (r *RangeSM) SizeBytes() int64 {
	start, end := r.Bounds()
	lower, upper := dataSpanBounds(keySpan{start: start, end: end})
	n, err := r.store.db.EstimateDiskUsage(lower, upper)
	if err != nil {
		n = 0
	}
	return int64(n) + r.store.unflushed.get(r.rangeID)
}

// unflushedBytes counts, per range, the bytes of the batches committed since
// Pebble last began a flush ("pending") and of those committed before the
// flush under way began ("flushing", which its sstables hold once it ends).
// A flush takes only the memtables filled before it began, so this is an
// estimate: batches already in the memtable being written when a flush
// begins are forgotten when it ends (with flushes back to back, up to a
// memtable's worth: the range is undercounted until the next flush), a
// batch committed as a flush begins may be counted twice until the next
// one, and nothing is known of memtables replayed from the WAL at open.
type unflushedBytes struct {
	mu       sync.Mutex
	pending  map[uint64]int64
	flushing map[uint64]int64
}

func newUnflushedBytes() *unflushedBytes {
	return &unflushedBytes{pending: make(map[uint64]int64), flushing: make(map[uint64]int64)}
}

// add counts n bytes committed for rangeID.
func (u *unflushedBytes) add(rangeID uint64, n int) {
	u.mu.Lock()
	u.pending[rangeID] += int64(n)
	u.mu.Unlock()
}

// forget drops rangeID's counts (its data was just deleted).
func (u *unflushedBytes) forget(rangeID uint64) {
	u.mu.Lock()
	delete(u.pending, rangeID)
	delete(u.flushing, rangeID)
	u.mu.Unlock()
}

func (u *unflushedBytes) get(rangeID uint64) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pending[rangeID] + u.flushing[rangeID]
}

// listen makes el keep the counts: Pebble calls FlushBegin and FlushEnd
// holding its own mutex, so they take only u.mu, which is never held across
// a call into Pebble.
func (u *unflushedBytes) listen(el *pebble.EventListener) {
	el.FlushBegin = func(info pebble.FlushInfo) {
		if info.Ingest {
			return
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		for id, n := range u.pending {
			u.flushing[id] += n
		}
		clear(u.pending)
	}
	el.FlushEnd = func(info pebble.FlushInfo) {
		if info.Ingest {
			return
		}
		// Also after a failed flush (Pebble retries it; until then its
		// memtables are not counted).
		u.mu.Lock()
		defer u.mu.Unlock()
		clear(u.flushing)
	}
}

// RangeIDs lists the ranges that have state in the store (the ones this node
// has replicas of, including those created by splits), in ID order.
func (s *Store) RangeIDs() ([]uint64, error) {
	var ids []uint64
	err := forEachStoredRange(s.db, func(rangeID uint64) error {
		_, found, err := getValue(s.db, metaKey(rangeID, metaState))
		if err == nil && found {
			ids = append(ids, rangeID)
		}
		return err
	})
	return ids, err
}
