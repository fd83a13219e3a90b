package node

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// descriptorSyncInterval is how often a node checks that the meta range
// records the ranges it leads, besides right after a split.
const descriptorSyncInterval = 5 * time.Second

// startupSyncPasses and startupSyncPause: the descriptor passes a node makes
// right after it starts, before it settles to descriptorSyncInterval.
const (
	startupSyncPasses = 20
	startupSyncPause  = 250 * time.Millisecond
)

// runDescriptorSync keeps the meta range's range descriptors current. Each
// node records the ranges it holds a replica of whose record is missing or
// older: after a split here (recordRangesSoon), and every
// descriptorSyncInterval, which also covers a record that failed to land.
// Every replica of a range records the same descriptor (the meta range keeps
// the highest generation), so a new range is recorded as soon as any of its
// replicas opens it, leader or not.
func (s *Node) runDescriptorSync() {
	// Right after start, often: a new cluster's first range is recorded as
	// soon as it opens, for the nodes without a replica of it.
	for range startupSyncPasses {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-time.After(startupSyncPause):
		}
		s.recordRanges()
		s.cache.Refresh()
	}
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
		ctx, cancel := s.stopper.WithTimeout(descriptorSyncInterval)
		descs, err := meta.Ranges(ctx, s.meta, false)
		cancel()
		if err == nil {
			s.dropStaleReplicas(descs)
			s.giveUpSkippedChildren(descs)
		}
		s.removeAbandonedLearners()
		// Ranges held elsewhere are routed by the descriptors: take the
		// latest.
		s.cache.Refresh()
	}
}

// routingDescriptors returns the range descriptors this node's replica of
// the meta range has, for routing to ranges held elsewhere. Until any is
// recorded, that is the first range as a new cluster starts it: the whole
// keyspace on the first --replicas members.
func (s *Node) routingDescriptors() []*tesserapb.RangeDescriptor {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ds, err := meta.Ranges(ctx, s.meta, false)
	if err != nil || len(ds) == 0 {
		return []*tesserapb.RangeDescriptor{{
			RangeId: firstRangeID, Generation: 1,
			ReplicaNodeIds: slices.Sorted(maps.Keys(s.firstRangeMembers())),
		}}
	}
	return ds
}

// recordRangesSoon asks runDescriptorSync for a pass.
func (s *Node) recordRangesSoon() {
	select {
	case s.rangesChanged <- struct{}{}:
	default:
	}
}

// recordRanges records the descriptors of the ranges held here that the
// meta range lacks or holds in an older generation.
func (s *Node) recordRanges() {
	var ds []*tesserapb.RangeDescriptor
	memberships := s.memberships()
	for _, r := range s.rangeList() {
		rsm := s.store.Range(r.RangeID())
		m := memberships[r.RangeID()]
		if rsm == nil || len(m.nodes) == 0 {
			continue
		}
		start, end, gen := rsm.VersionedBounds()
		ds = append(ds, &tesserapb.RangeDescriptor{
			RangeId: r.RangeID(), StartKey: start, EndKey: end,
			ReplicaNodeIds: m.nodes, Generation: gen, ConfVersion: m.confChange,
		})
	}
	if len(ds) == 0 {
		return
	}
	// A stopping node does not wait for the timeout.
	ctx, cancel := s.stopper.WithTimeout(descriptorSyncInterval)
	defer cancel()
	n, err := meta.RecordRanges(ctx, s.meta, ds)
	if err != nil {
		s.log.Debug("recording range descriptors", "recorded", n, "err", err)
		return
	}
	if n > 0 {
		s.log.Debug("recorded range descriptors", "recorded", n)
	}
}

// giveUpSkippedChildren hands back replicas this node is a member of but
// never started: a replica that installed a snapshot of its range taken
// after a split never applies the split, so the split's child never starts
// here (onSplit), though the child's Raft membership and descriptor name
// this node. The child would run a replica short while placement counts it
// full. Once a range has been missing here for two passes while no range
// this node runs covers its keys (a lagging parent that has yet to apply
// the split does), this node asks the range's leader to remove its replica;
// placement then adds one back as moves add replicas, from a snapshot.
func (s *Node) giveUpSkippedChildren(descs []*tesserapb.RangeDescriptor) {
	ctx, cancel := s.stopper.WithTimeout(descriptorSyncInterval)
	defer cancel()
	missing := map[uint64]bool{}
	for _, d := range descs {
		if !slices.Contains(d.ReplicaNodeIds, s.replicaID) || s.rangeByID(d.RangeId) != nil || s.coversAny(d.StartKey, d.EndKey) {
			continue
		}
		missing[d.RangeId] = true
		if !s.skipped[d.RangeId] {
			continue // seen missing once: a replica may be starting
		}
		s.log.Warn("giving up a replica this node never started (its range split in a snapshot it installed)", "range", d.RangeId)
		req := &tesserapb.ChangeReplicasRequest{RangeId: d.RangeId, RemoveNodeId: s.replicaID}
		if _, err := s.Internal().ChangeReplicas(ctx, req); err != nil {
			s.log.Warn("giving up a replica this node never started", "range", d.RangeId, "err", err)
		}
	}
	s.skipped = missing
}

// coversAny reports whether a range this node runs holds keys of
// [start, end) (an empty end is the end of the keyspace).
func (s *Node) coversAny(start, end []byte) bool {
	for _, r := range s.rangeList() {
		ls, le, ok := r.Bounds()
		if !ok {
			return true // not open yet: cannot tell
		}
		if router.SpansOverlap(start, end, ls, le) {
			return true
		}
	}
	return false
}
