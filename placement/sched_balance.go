package placement

import (
	"cmp"
	"fmt"
	"slices"
)

// shedDisk moves replicas, largest first, off each live node above its shed
// water until its projected use is back under it. Follower replicas move;
// when only ranges the node leads could, one leadership moves off so that
// range can move on a later pass.
func (p *plan) shedDisk() {
	for _, id := range p.nodeIDs {
		n := p.nodes[id]
		if n.State != NodeLive || !n.overShedWater() {
			continue
		}
		reason := fmt.Sprintf("disk: node %d at %d%% of quota", id, 100*n.DiskUsedBytes/n.DiskQuotaBytes)
		ranges := p.rangesOn(id)
		slices.SortStableFunc(ranges, func(a, b *RangeInfo) int { return cmp.Compare(b.SizeBytes, a.SizeBytes) })
		for _, r := range ranges {
			if n.overShedWater() && r.Leader != id {
				p.moveOff(r, id, reason)
			}
		}
		if n.overShedWater() {
			p.handOnForDisk(n, ranges, reason)
		}
	}
}

// handOnForDisk hands on the leadership of the first of ranges that
// n leads and whose replica on n could move.
func (p *plan) handOnForDisk(n *nodeLoad, ranges []*RangeInfo, reason string) {
	for _, r := range ranges {
		if r.Leader != n.ID || !p.actionable(r) || !p.canMoveFrom(r, n.ID) {
			continue
		}
		if p.bestTarget(r) != nil && p.handOn(r, reason) {
			return
		}
	}
}

// balanceReplicas moves replicas from live nodes with more to live nodes
// with fewer until no two live nodes that could trade differ by two or
// more. A move needs that difference, so the target never ends above the
// source and nothing moves back and forth. Follower replicas move; when
// only ranges the sources lead could, one leadership moves off so that
// range can move on a later pass.
func (p *plan) balanceReplicas() {
	for !p.full() && p.balanceReplicasOnce(false) {
	}
	p.balanceReplicasOnce(true)
}

// balanceReplicasOnce proposes one step for the most-loaded source and
// least-loaded target that have a range to trade, among the ranges the
// source leads or not, as led says.
func (p *plan) balanceReplicasOnce(led bool) bool {
	sources := p.liveNodesBy(byReplicas, true)
	targets := p.liveNodesBy(byReplicas, false)
	for _, src := range sources {
		for _, dst := range targets {
			if src.replicas-dst.replicas < 2 {
				break
			}
			reason := fmt.Sprintf("replica balance: node %d has %d, node %d has %d",
				src.ID, src.replicas, dst.ID, dst.replicas)
			for _, r := range p.tradeable(src, dst, led) {
				if led && p.handOn(r, reason) ||
					!led && p.propose(Op{Kind: MoveReplica, Range: r.ID, From: src.ID, To: dst.ID, Reason: reason}) {
					return true
				}
			}
		}
	}
	return false
}

// tradeable lists the ranges whose voter may move from src to dst and that
// src leads or not, as led says, smallest first.
func (p *plan) tradeable(src, dst *nodeLoad, led bool) []*RangeInfo {
	var out []*RangeInfo
	for _, r := range p.rangesOn(src.ID) {
		rep, _ := replicaOn(r, src.ID)
		if (r.Leader == src.ID) == led && rep.Role == Voter && p.actionable(r) &&
			p.canReceive(r, dst) && p.canMoveFrom(r, src.ID) {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *RangeInfo) int { return cmp.Compare(a.SizeBytes, b.SizeBytes) })
	return out
}

// balanceLeaders moves leaderships from live nodes that lead more to live
// voters that lead fewer, until no chain of transfers narrows a difference
// of two or more without making a node hot. A node whose ranges have
// voters only on nodes about as loaded as itself reaches a lighter node
// through a chain; at the fixed point the counts are as even as the
// ranges' voters allow.
func (p *plan) balanceLeaders() {
	for !p.full() && p.balanceLeadersOnce() {
	}
}

func (p *plan) balanceLeadersOnce() bool {
	line := p.hotLine()
	for _, src := range p.liveNodesBy(byLeaders, true) {
		chain := p.leaderChain(src, line)
		if chain == nil || p.started+len(chain) > p.limits.Total {
			continue
		}
		for _, op := range chain {
			p.propose(op)
		}
		return true
	}
	return false
}

// leaderChain finds the shortest chain of transfers from src to a live node
// leading at least two fewer: each hop hands a range the hop's node leads,
// coolest first, to another voter that takes it. The ends change by one,
// the nodes between keep their counts. Nil if there is none.
func (p *plan) leaderChain(src *nodeLoad, line float64) []Op {
	type hop struct {
		from uint64
		r    *RangeInfo
	}
	cameFrom := map[uint64]hop{src.ID: {}}
	for queue := []*nodeLoad{src}; len(queue) > 0; queue = queue[1:] {
		for _, r := range p.ledBy(queue[0].ID, false) {
			for _, rep := range sortedReplicas(r) {
				n := p.nodes[rep.NodeID]
				if _, seen := cameFrom[rep.NodeID]; seen || rep.Role != Voter || n == nil ||
					n.State != NodeLive || !n.takesLeadership(r, line) {
					continue
				}
				cameFrom[n.ID] = hop{queue[0].ID, r}
				if n.leaders <= src.leaders-2 {
					reason := fmt.Sprintf("leader balance: node %d leads %d, node %d leads %d",
						src.ID, src.leaders, n.ID, n.leaders)
					var chain []Op
					for at := n.ID; at != src.ID; at = cameFrom[at].from {
						h := cameFrom[at]
						chain = append(chain, Op{Kind: TransferLeader, Range: h.r.ID, From: h.from, To: at, Reason: reason})
					}
					slices.Reverse(chain)
					return chain
				}
				queue = append(queue, n)
			}
		}
	}
	return nil
}

// balanceLoad takes one hot range off each hot live node, hottest node
// first: its leadership to a voter that stays cool, or, when no voter can
// take it, a voter moved to a cool node that a later pass can hand it to.
func (p *plan) balanceLoad() {
	line := p.hotLine()
	for _, src := range p.liveNodesBy(byQPS, true) {
		if src.qps <= line || p.full() {
			break
		}
		reason := fmt.Sprintf("load: node %d at %.0f qps, hot above %.0f", src.ID, src.qps, line)
		_ = p.moveHotLeadership(src, line, reason) || p.moveHotFollower(src, line, reason)
	}
}

// moveHotLeadership transfers the hottest range src leads whose best other
// voter stays at or below line with it; below line means below src too.
func (p *plan) moveHotLeadership(src *nodeLoad, line float64, reason string) bool {
	for _, r := range p.ledBy(src.ID, true) {
		to := p.leaderTarget(r, src.ID, line)
		if r.QPS > 0 && to.takesLeadership(r, line) &&
			p.propose(Op{Kind: TransferLeader, Range: r.ID, From: src.ID, To: to.ID, Reason: reason}) {
			return true
		}
	}
	return false
}

// moveHotFollower moves the hottest follower of the hottest range src leads
// that can go, to the coolest node that stays at or below line with the
// range's load. The target must hold fewer replicas than the follower's
// node, so the move never widens the replica spread balanceReplicas keeps.
func (p *plan) moveHotFollower(src *nodeLoad, line float64, reason string) bool {
	for _, r := range p.ledBy(src.ID, true) {
		if r.QPS <= 0 {
			continue
		}
		from := p.hottestFollower(r)
		if from == nil || !p.canMoveFrom(r, from.ID) {
			continue
		}
		for _, to := range p.liveNodesBy(byQPS, false) {
			if to.qps+r.QPS <= line && to.replicas < from.replicas && p.canReceive(r, to) {
				return p.propose(Op{Kind: MoveReplica, Range: r.ID, From: from.ID, To: to.ID, Reason: reason})
			}
		}
	}
	return false
}

// hottestFollower is the live voter of r, other than its leader, with the
// most load.
func (p *plan) hottestFollower(r *RangeInfo) *nodeLoad {
	var hottest *nodeLoad
	for _, rep := range sortedReplicas(r) {
		n := p.nodes[rep.NodeID]
		if rep.Role == Voter && rep.NodeID != r.Leader && n != nil && n.State == NodeLive &&
			(hottest == nil || n.qps > hottest.qps) {
			hottest = n
		}
	}
	return hottest
}

func byReplicas(n *nodeLoad) float64 { return float64(n.replicas) }
func byLeaders(n *nodeLoad) float64  { return float64(n.leaders) }
func byQPS(n *nodeLoad) float64      { return n.qps }

// liveNodesBy returns the live nodes ordered by key, ties by ID.
func (p *plan) liveNodesBy(key func(*nodeLoad) float64, descending bool) []*nodeLoad {
	var out []*nodeLoad
	for _, id := range p.nodeIDs {
		if n := p.nodes[id]; n.State == NodeLive {
			out = append(out, n)
		}
	}
	slices.SortStableFunc(out, func(a, b *nodeLoad) int {
		if descending {
			return cmp.Compare(key(b), key(a))
		}
		return cmp.Compare(key(a), key(b))
	})
	return out
}

// ledBy returns the actionable ranges the node leads whose leadership may
// move for balance (not KeepLeader), ordered by load (hottest first if
// hottest says so), ties by ID.
func (p *plan) ledBy(nodeID uint64, hottest bool) []*RangeInfo {
	var out []*RangeInfo
	for _, r := range p.ranges {
		if r.Leader == nodeID && !r.KeepLeader && p.actionable(r) {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *RangeInfo) int {
		if hottest {
			return cmp.Compare(b.QPS, a.QPS)
		}
		return cmp.Compare(a.QPS, b.QPS)
	})
	return out
}
