package shard

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// loadSampleSize is how many of a window's request keys the load tracker
// keeps (a uniform reservoir sample).
const loadSampleSize = 128

// loadTracker measures a range's request rate and samples the keys requests
// touch, so a range that is hot can be split at a key that halves its load
// (docs/design.md, "Splits"). It has no goroutine and no clock of its own:
// the splitter calls roll with the time once per interval.
type loadTracker struct {
	mu sync.Mutex
	// count and sample cover the current window, since windowStart. Guarded by mu.
	count       int64
	sample      [][]byte
	windowStart time.Time
	rng         *rand.Rand
	// qps and lastSample are the last finished window's. Guarded by mu.
	qps        float64
	lastSample [][]byte
}

func newLoadTracker(now time.Time, seed uint64) *loadTracker {
	return &loadTracker{windowStart: now, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// record counts one request touching key.
func (l *loadTracker) record(key []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count++
	switch {
	case len(l.sample) < loadSampleSize:
		l.sample = append(l.sample, bytes.Clone(key))
	default:
		// Reservoir sampling: every request so far is in the sample with
		// the same probability.
		if i := l.rng.Int64N(l.count); i < loadSampleSize {
			l.sample[i] = bytes.Clone(key)
		}
	}
}

// roll ends the current window and returns its request rate.
func (l *loadTracker) roll(now time.Time) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if secs := now.Sub(l.windowStart).Seconds(); secs > 0 {
		l.qps = float64(l.count) / secs
	}
	l.lastSample, l.sample = l.sample, nil
	l.count, l.windowStart = 0, now
	return l.qps
}

// rate is the last finished window's request rate.
func (l *loadTracker) rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.qps
}

// splitKey returns the median of the last window's sampled keys: a split
// there puts about half the requests on each side. It returns nil when the
// sample cannot cut the range: no key above start (a split at the range's
// start would leave the left side empty), or too few distinct keys.
func (l *loadTracker) splitKey(start []byte) []byte {
	l.mu.Lock()
	keys := slices.Clone(l.lastSample)
	l.mu.Unlock()
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	if len(keys) < 2 {
		return nil
	}
	mid := keys[len(keys)/2]
	if bytes.Compare(mid, start) <= 0 {
		return nil
	}
	return mid
}
