package server

import (
	"context"
	"time"

	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// defaultSplitCheckInterval is how often range leaders compare their size
// with --range-max-bytes.
const defaultSplitCheckInterval = 10 * time.Second

// runSplitter splits, at their middle key, the ranges this node leads that
// have grown past --range-max-bytes.
func (s *Server) runSplitter() {
	interval := s.cfg.SplitCheckInterval
	if interval <= 0 {
		interval = defaultSplitCheckInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-s.stopc:
			return
		case <-tick.C:
		}
		for _, r := range s.rangeList() {
			if !r.IsLeader() {
				continue
			}
			rsm := s.store.Range(r.RangeID())
			if rsm == nil || rsm.SizeBytes() <= s.cfg.RangeMaxBytes {
				continue
			}
			s.splitInHalf(r)
		}
	}
}

// splitInHalf splits a range at the key that halves its data.
func (s *Server) splitInHalf(r *shard.Replica) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := r.Read(ctx, false, func(v *statemachine.View) (any, error) { return v.MidKey() })
	if err != nil || out == nil || len(out.([]byte)) == 0 {
		return
	}
	mid := out.([]byte)
	if err := s.SplitRange(ctx, string(mid)); err != nil {
		s.log.Warn("size-triggered split failed", "range", r.RangeID(), "key", string(mid), "err", err)
		return
	}
	s.log.Info("split a range over --range-max-bytes", "range", r.RangeID(), "key", string(mid))
}
