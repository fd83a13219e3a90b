package shard

import "sync"

// fence is a range leader's read/write fence (docs/design.md, "Read fence"): the
// highest revision a read (or a compaction) has claimed on this range, and the
// writes in flight with their revisions. It has no goroutines; the proposer
// and readers call it.
//
// The rule it enforces: a write is admitted only with a revision above the
// fence, and admission and raising happen under one lock, so after raise(R)
// returns, every write with a revision <= R that this leader will ever propose
// is among the ones raise returned to wait for.
type fence struct {
	mu sync.Mutex
	// fenceRev is the highest revision claimed by a read. Guarded by mu.
	fenceRev int64
	// pending are admitted writes whose outcome is not known yet, by ID.
	// Guarded by mu.
	pending map[uint64]*pendingWrite
	// nextID numbers admitted writes. Guarded by mu.
	nextID uint64
}

type pendingWrite struct {
	rev int64
	// settled is closed once the write has been applied, has failed, or will
	// never be applied.
	settled chan struct{}
}

func newFence() *fence { return &fence{pending: map[uint64]*pendingWrite{}} }

// admit registers count writes with the consecutive revisions first,
// first+1, ... and returns their IDs, or ok=false (registering nothing) when
// first is not above the fence: a read claimed those revisions after they
// were taken, and the writes must take new ones.
func (f *fence) admit(first int64, count int) (ids []uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if first <= f.fenceRev {
		return nil, false
	}
	for i := range count {
		f.nextID++
		f.pending[f.nextID] = &pendingWrite{rev: first + int64(i), settled: make(chan struct{})}
		ids = append(ids, f.nextID)
	}
	return ids, true
}

// settle marks an admitted write's outcome as known.
func (f *fence) settle(id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w, ok := f.pending[id]; ok {
		close(w.settled)
		delete(f.pending, id)
	}
}

// raise lifts the fence to rev (it never goes down) and returns the settle
// channels of the admitted writes at or below rev: once they are all closed,
// this range holds every write it will ever have at or below rev.
func (f *fence) raise(rev int64) []<-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fenceRev = max(f.fenceRev, rev)
	var waits []<-chan struct{}
	for _, w := range f.pending {
		if w.rev <= rev {
			waits = append(waits, w.settled)
		}
	}
	return waits
}

// level returns the fence's revision.
func (f *fence) level() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fenceRev
}
