package shard

import (
	"fmt"
	"testing"
	"time"
)

func TestLoadTracker(t *testing.T) {
	t0 := time.Unix(100, 0)
	l := newLoadTracker(t0, 1)
	// 1,000 requests in one second, 90% of them on keys k50..k99.
	for i := range 1000 {
		k := 50 + i%50
		if i%10 == 0 {
			k = i % 50
		}
		l.record([]byte(fmt.Sprintf("k%02d", k)))
	}
	if qps := l.roll(t0.Add(time.Second)); qps != 1000 {
		t.Fatalf("qps = %v, want 1000", qps)
	}
	key := string(l.splitKey(nil))
	if key < "k55" || key > "k90" {
		t.Fatalf("split key %q does not halve the load (most requests are on k50..k99)", key)
	}
	if got := l.splitKey([]byte("k99")); got != nil {
		t.Fatalf("split key %q at or below the range start", got)
	}
	// An idle window: rate 0, no sample, no split key.
	if qps := l.roll(t0.Add(2 * time.Second)); qps != 0 {
		t.Fatalf("idle qps = %v", qps)
	}
	if got := l.splitKey(nil); got != nil {
		t.Fatalf("split key %q from an empty sample", got)
	}
	// One hot key cannot be split.
	for range 100 {
		l.record([]byte("hot"))
	}
	l.roll(t0.Add(3 * time.Second))
	if got := l.splitKey(nil); got != nil {
		t.Fatalf("split key %q for a single hot key", got)
	}
}
