package node

import (
	"testing"
	"time"
)

func TestParseCompaction(t *testing.T) {
	for _, tc := range []struct {
		mode, retention string
		want            compactionPolicy
		wantErr         bool
	}{
		{"periodic", "0", compactionPolicy{}, false},
		{"periodic", "1", compactionPolicy{period: time.Hour}, false},
		{"periodic", "30m", compactionPolicy{period: 30 * time.Minute}, false},
		{"periodic", "soon", compactionPolicy{}, true},
		{"periodic", "-1", compactionPolicy{}, true},
		{"revision", "1000", compactionPolicy{revisions: 1000}, false},
		{"revision", "1h", compactionPolicy{}, true},
		{"daily", "1", compactionPolicy{}, true},
	} {
		got, err := parseCompaction(tc.mode, tc.retention)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseCompaction(%q, %q) = %+v, %v; want %+v, err=%v", tc.mode, tc.retention, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestCompactorPeriodic(t *testing.T) {
	c := &compactor{policy: compactionPolicy{period: 10 * time.Second}}
	t0 := time.Unix(0, 0)
	// One sample a second, revision 100+second.
	var got []int64
	for s := 0; s <= 25; s++ {
		if target := c.observe(t0.Add(time.Duration(s)*time.Second), int64(100+s)); target != 0 {
			got = append(got, target)
		}
	}
	// At second s >= 10 the store's revision 10s ago was 100+s-10.
	if len(got) != 16 || got[0] != 100 || got[len(got)-1] != 115 {
		t.Fatalf("periodic targets = %v, want 100..115", got)
	}
	if len(c.samples) > 12 {
		t.Fatalf("compactor keeps %d samples, want about one period's worth", len(c.samples))
	}
}

func TestCompactorRevision(t *testing.T) {
	c := &compactor{policy: compactionPolicy{revisions: 100}}
	now := time.Unix(0, 0)
	if got := c.observe(now, 50); got != 0 {
		t.Fatalf("target with too few revisions = %d, want 0", got)
	}
	if got := c.observe(now, 250); got != 150 {
		t.Fatalf("target = %d, want 150", got)
	}
	if got := c.observe(now, 250); got != 0 {
		t.Fatalf("repeated target = %d, want 0 (already compacted)", got)
	}
}

func TestSplitPlanner(t *testing.T) {
	p := &splitPlanner{maxBytes: 1000, maxQPS: 100, hot: map[uint64]int{}}
	if got := p.observe(1, 2000, 0); got != splitBySize {
		t.Fatalf("over the size limit: %v", got)
	}
	// Load must be sustained: three hot intervals in a row.
	for i, want := range []splitReason{noSplit, noSplit, splitByLoad, noSplit} {
		if got := p.observe(2, 10, 500); got != want {
			t.Fatalf("hot interval %d: %v, want %v", i+1, got, want)
		}
	}
	// A cool interval resets the count.
	p.observe(3, 10, 500)
	p.observe(3, 10, 500)
	p.observe(3, 10, 5)
	if got := p.observe(3, 10, 500); got != noSplit {
		t.Fatalf("after a cool interval: %v", got)
	}
	off := &splitPlanner{maxBytes: 1000, hot: map[uint64]int{}}
	for range 5 {
		if got := off.observe(4, 10, 1e9); got != noSplit {
			t.Fatalf("load-based splits off, yet %v", got)
		}
	}
}
