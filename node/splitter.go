package node

import (
	"time"

	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// defaultSplitCheckInterval is how often range leaders compare their size
// with --range-max-bytes and their request rate with --range-split-qps.
const defaultSplitCheckInterval = 10 * time.Second

// hotWindows is how many check intervals in a row a range must be over
// --range-split-qps before it is split by load (sustained, not a burst).
const hotWindows = 3

// splitPlanner decides which ranges to split. It has no goroutine or clock:
// the splitter feeds it each interval's measurements.
type splitPlanner struct {
	maxBytes int64
	maxQPS   float64 // 0: no load-based splits
	// hot counts, per range, the intervals in a row it was over maxQPS.
	hot map[uint64]int
}

type splitReason int

const (
	noSplit splitReason = iota
	splitBySize
	splitByLoad
)

// observe records one interval of a range this node leads and says whether
// (and why) to split it.
func (p *splitPlanner) observe(rangeID uint64, sizeBytes int64, qps float64) splitReason {
	if p.maxQPS > 0 && qps > p.maxQPS {
		p.hot[rangeID]++
	} else {
		delete(p.hot, rangeID)
	}
	switch {
	case sizeBytes > p.maxBytes:
		return splitBySize
	case p.hot[rangeID] >= hotWindows:
		delete(p.hot, rangeID)
		return splitByLoad
	}
	return noSplit
}

// startSplitter starts the check that splits the ranges this node leads
// that have grown past --range-max-bytes (at the key halving their data) or
// stayed over --range-split-qps (at the key halving their requests).
func (s *Node) startSplitter() {
	interval := s.cfg.SplitCheckInterval
	if interval <= 0 {
		interval = defaultSplitCheckInterval
	}
	planner := &splitPlanner{maxBytes: s.cfg.RangeMaxBytes, maxQPS: s.cfg.RangeSplitQPS, hot: map[uint64]int{}}
	_ = s.stopper.Every(interval, func(now time.Time) {
		for _, r := range s.rangeList() {
			qps := r.RollLoad(now)
			rsm := s.store.Range(r.RangeID())
			if rsm == nil || !r.IsLeader() {
				continue
			}
			switch planner.observe(r.RangeID(), rsm.SizeBytes(), qps) {
			case splitBySize:
				s.splitAtMiddle(r)
			case splitByLoad:
				if key := r.LoadSplitKey(); key != nil {
					s.split(r, key, "load", "qps", qps)
				}
			}
		}
	})
}

// splitAtMiddle splits a range at the key that halves its data.
func (s *Node) splitAtMiddle(r *shard.Replica) {
	ctx, cancel := s.stopper.WithTimeout(30 * time.Second)
	defer cancel()
	out, err := r.Read(ctx, false, func(v *statemachine.View) (any, error) { return v.MidKey() })
	if err != nil || out == nil || len(out.([]byte)) == 0 {
		return
	}
	s.split(r, out.([]byte), "size", "size-bytes", s.store.Range(r.RangeID()).SizeBytes())
}

func (s *Node) split(r *shard.Replica, key []byte, why string, attrs ...any) {
	ctx, cancel := s.stopper.WithTimeout(30 * time.Second)
	defer cancel()
	if err := s.SplitRange(ctx, string(key)); err != nil {
		s.log.Warn("automatic split failed", append([]any{"range", r.RangeID(), "key", string(key), "by", why, "err", err}, attrs...)...)
		return
	}
	s.log.Info("split a range", append([]any{"range", r.RangeID(), "key", string(key), "by", why}, attrs...)...)
}
