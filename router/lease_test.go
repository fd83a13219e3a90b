package router

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// splittable is a Range whose bounds and generation a test changes.
type splittable struct {
	boundsOnly
	mu  sync.Mutex
	gen uint64
}

func (s *splittable) Bounds() ([]byte, []byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boundsOnly.Bounds()
}

func (s *splittable) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

func (s *splittable) split(at string) *splittable {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	child := &splittable{boundsOnly: boundsOnly{id: s.id + 10, start: at, end: s.end}, gen: s.gen}
	s.end = at
	return child
}

// TestEveryRangeReachesSplitChildren: a lease command also reaches a range
// that split off one of the ranges it went to, whether the split applied just
// before the command there (the result's generation shows it) or had already
// applied on this node's replica while the range cache, and the list of
// started ranges, did not show the child yet; ranges that did not split are
// asked once.
func TestEveryRangeReachesSplitChildren(t *testing.T) {
	for _, splitFirst := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		left := &splittable{boundsOnly: boundsOnly{id: 1, start: "", end: "g"}, gen: 1}
		right := &splittable{boundsOnly: boundsOnly{id: 2, start: "g"}, gen: 1}
		cache := NewRangeCache()
		cache.Set([]Range{left, right})
		r := New(Config{}, cache, nil, nil)
		startChild := func(child Range) {
			go func() {
				time.Sleep(50 * time.Millisecond)
				cache.Set([]Range{left, right, child})
			}()
		}
		if splitFirst {
			startChild(right.split("p"))
		}
		var (
			mu    sync.Mutex
			calls = map[uint64]int{}
		)
		do := func(rng Range) (*tesserapb.Result, error) {
			mu.Lock()
			calls[rng.RangeID()]++
			mu.Unlock()
			if !splitFirst && rng == Range(right) && right.Generation() == 1 {
				// The range split at "p" just before this command applied.
				startChild(right.split("p"))
			}
			return &tesserapb.Result{Generation: rng.Generation()}, nil
		}
		if err := r.everyRange(ctx, map[uint64]bool{}, nil, do); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		if calls[1] != 1 || calls[2] != 1 || calls[12] != 1 || len(calls) != 3 {
			t.Errorf("split first %v: calls per range = %v, want one each on ranges 1, 2 and the split-off 12", splitFirst, calls)
		}
		mu.Unlock()
	}
}
