package node

import (
	"fmt"
	"strconv"
	"time"
)

// compactionPolicy is etcd's auto-compaction: periodic (keep a time window of
// history) or revision (keep the last N revisions). The zero value is off.
type compactionPolicy struct {
	period    time.Duration // periodic mode; 0 = off
	revisions int64         // revision mode; 0 = off
}

// revisionCheckInterval is how often revision-mode compaction looks, as etcd.
const revisionCheckInterval = 5 * time.Minute

// parseCompaction parses --auto-compaction-mode/--auto-compaction-retention as
// etcd does: periodic retention is a duration, or a bare number of hours.
func parseCompaction(mode, retention string) (compactionPolicy, error) {
	switch mode {
	case "periodic":
		if retention == "" || retention == "0" {
			return compactionPolicy{}, nil
		}
		if h, err := strconv.ParseInt(retention, 10, 64); err == nil {
			if h < 0 {
				return compactionPolicy{}, fmt.Errorf("--auto-compaction-retention must not be negative")
			}
			return compactionPolicy{period: time.Duration(h) * time.Hour}, nil
		}
		d, err := time.ParseDuration(retention)
		if err != nil || d < 0 {
			return compactionPolicy{}, fmt.Errorf("--auto-compaction-retention %q: want a duration (e.g. 1h, 30m) or a number of hours", retention)
		}
		return compactionPolicy{period: d}, nil
	case "revision":
		n, err := strconv.ParseInt(retention, 10, 64)
		if err != nil || n < 0 {
			return compactionPolicy{}, fmt.Errorf("--auto-compaction-retention %q: revision mode wants a number of revisions", retention)
		}
		return compactionPolicy{revisions: n}, nil
	default:
		return compactionPolicy{}, fmt.Errorf("--auto-compaction-mode must be \"periodic\" or \"revision\", not %q", mode)
	}
}

// enabled reports whether the policy compacts at all.
func (p compactionPolicy) enabled() bool { return p.period > 0 || p.revisions > 0 }

// interval is how often the compactor looks.
func (p compactionPolicy) interval() time.Duration {
	if p.period > 0 {
		return max(p.period/10, time.Second)
	}
	return revisionCheckInterval
}

// compactor decides which revision to compact to. It has no goroutine or clock:
// the driver calls observe on every interval with the time and the current
// revision, and compacts to what it returns (0: nothing to do).
type compactor struct {
	policy compactionPolicy
	// samples are (time, revision) observations, oldest first, covering at
	// least one period (periodic mode only).
	samples []revSample
	// compacted is the highest revision this compactor has asked for.
	compacted int64
}

type revSample struct {
	at  time.Time
	rev int64
}

func (c *compactor) observe(now time.Time, currentRev int64) int64 {
	var target int64
	switch {
	case c.policy.period > 0:
		c.samples = append(c.samples, revSample{at: now, rev: currentRev})
		// The newest sample at least one period old is the revision the
		// store had `period` ago: everything before it may go.
		cutoff := now.Add(-c.policy.period)
		keep := 0
		for i, s := range c.samples {
			if !s.at.After(cutoff) {
				target = s.rev
				keep = i
			}
		}
		c.samples = c.samples[keep:]
	case c.policy.revisions > 0:
		target = currentRev - c.policy.revisions
	}
	if target <= c.compacted {
		return 0
	}
	c.compacted = target
	return target
}
