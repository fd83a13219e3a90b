package watchhub

import (
	"context"
	"sync"
)

// byteBudget is a count of bytes that takers wait for and give back.
type byteBudget struct {
	mu    sync.Mutex
	total int
	avail int           // may go below zero: see take and give
	freed chan struct{} // closed, and replaced, when bytes come back
}

func newByteBudget(total int) *byteBudget {
	return &byteBudget{total: total, avail: total, freed: make(chan struct{})}
}

// take waits until n bytes are free, or the whole budget when n is more,
// and takes n; false when ctx ends first.
func (b *byteBudget) take(ctx context.Context, n int) bool {
	for {
		b.mu.Lock()
		if b.avail >= min(n, b.total) {
			b.avail -= n
			b.mu.Unlock()
			return true
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return false
		case <-freed:
		}
	}
}

// give returns n bytes (a negative n takes more, without waiting: for a
// taker whose use turned out larger than it took).
func (b *byteBudget) give(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	if n > 0 {
		close(b.freed)
		b.freed = make(chan struct{})
	}
	b.mu.Unlock()
}
