package server

import (
	"cmp"
	"slices"
	"time"

	"github.com/tesserakv/tessera/shard"
)

// defaultLeaderBalanceInterval is how often a node checks whether it leads
// more data ranges than its share.
const defaultLeaderBalanceInterval = 30 * time.Second

// startLeaderBalancer starts the check that moves leaderships off this node
// while it leads at least two data ranges more than the member leading the
// fewest: one range per check, to that member. Splits already spread leadership (electNewRange);
// this brings it back after a member restarts or a failover gathered ranges
// on one node. Every node runs it and only gives its own leaderships away,
// so the moves never cross.
func (s *Server) startLeaderBalancer() {
	interval := s.cfg.LeaderBalanceInterval
	if interval < 0 || s.soleNode() {
		return
	}
	if interval == 0 {
		interval = defaultLeaderBalanceInterval
	}
	_ = s.stopper.Every(interval, func(time.Time) { s.balanceLeadersOnce() })
}

// balanceLeadersOnce is one check of the leader balancer (startLeaderBalancer):
// it asks for at most one of this node's leaderships to move, and reports
// whether it did.
func (s *Server) balanceLeadersOnce() bool {
	s.picksMu.Lock()
	led := s.leadershipCounts(0, s.raftMembers)
	s.picksMu.Unlock()
	memberships := s.memberships()
	id, to, ok := planLeaderMove(led, s.replicaID, s.rangeList(), func(rangeID uint64) []uint64 { return memberships[rangeID].nodes })
	if !ok {
		return false
	}
	if err := s.nh.RequestLeaderTransfer(id, to); err != nil {
		s.log.Debug("moving a range's leadership failed", "range", id, "to", to, "err", err)
		return false
	}
	s.log.Info("moving a range's leadership to even out leaders", "range", id, "to", to)
	return true
}

// rangeLeader is what planLeaderMove needs of a replica.
type rangeLeader interface {
	RangeID() uint64
	IsLeader() bool
}

var _ rangeLeader = (*shard.Replica)(nil)

// planLeaderMove picks the range this node (self) should hand to another of
// its members, given every node's count of led data ranges: the newest range
// self leads (never the first range: its leader keeps the lease clock, and a
// new one restarts every lease's TTL) whose least-leading member leads at
// least two fewer than self. members lists a range's voting members.
func planLeaderMove[R rangeLeader](led map[uint64]int, self uint64, ranges []R, members func(rangeID uint64) []uint64) (rangeID, to uint64, ok bool) {
	ranges = slices.Clone(ranges)
	slices.SortFunc(ranges, func(a, b R) int { return cmp.Compare(b.RangeID(), a.RangeID()) })
	for _, r := range ranges {
		if r.RangeID() == firstRangeID || !r.IsLeader() {
			continue
		}
		counts := map[uint64]int{}
		for _, id := range members(r.RangeID()) {
			counts[id] = led[id]
		}
		counts[self] = led[self]
		if to = leastLeading(counts, self); to != self && led[self]-led[to] >= 2 {
			return r.RangeID(), to, true
		}
	}
	return 0, 0, false
}
