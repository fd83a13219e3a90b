package server

import (
	"time"

	"github.com/tesserakv/tessera/placement"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// descriptorSyncInterval is how often a node checks that the meta range
// records the ranges it leads, besides right after a split.
const descriptorSyncInterval = 5 * time.Second

// runDescriptorSync keeps the meta range's range descriptors current. Each
// node records the ranges whose replica here leads: after a split here
// (recordRangesSoon), and every descriptorSyncInterval, which also covers a
// record that failed to land and a child range whose leader was elected
// after the split's pass.
func (s *Server) runDescriptorSync() {
	tick := time.NewTicker(descriptorSyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-tick.C:
		case <-s.rangesChanged:
		}
		s.recordRanges()
	}
}

// recordRangesSoon asks runDescriptorSync for a pass.
func (s *Server) recordRangesSoon() {
	select {
	case s.rangesChanged <- struct{}{}:
	default:
	}
}

// recordRanges records the descriptors of the ranges led here that the meta
// range lacks or holds in an older generation.
func (s *Server) recordRanges() {
	var ds []*tesserapb.RangeDescriptor
	replicas := s.replicaNodeIDs()
	for _, r := range s.rangeList() {
		rsm := s.store.Range(r.RangeID())
		if rsm == nil || !r.IsLeader() {
			continue
		}
		start, end, gen := rsm.VersionedBounds()
		ds = append(ds, &tesserapb.RangeDescriptor{
			RangeId: r.RangeID(), StartKey: start, EndKey: end,
			ReplicaNodeIds: replicas, Generation: gen,
		})
	}
	if len(ds) == 0 {
		return
	}
	// A stopping server does not wait for the timeout.
	ctx, cancel := s.stopper.WithTimeout(descriptorSyncInterval)
	defer cancel()
	n, err := placement.RecordRanges(ctx, s.meta, ds)
	if err != nil {
		s.log.Debug("recording range descriptors", "recorded", n, "err", err)
		return
	}
	if n > 0 {
		s.log.Debug("recorded range descriptors", "recorded", n)
	}
}
