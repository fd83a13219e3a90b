package placement

import (
	"cmp"
	"fmt"
	"slices"
)

// repair adds a replica to each range with fewer voters on non-dead nodes
// than the target, the ranges with fewest such voters first. The dead
// replicas stay until the range is back to target; removeExcess takes them
// out on a later pass.
func (p *plan) repair() {
	ranges := slices.Clone(p.ranges)
	slices.SortStableFunc(ranges, func(a, b *RangeInfo) int {
		return cmp.Compare(voters(a, 0, p.notDead), voters(b, 0, p.notDead))
	})
	for _, r := range ranges {
		alive := voters(r, 0, p.notDead)
		if alive >= p.target || !p.actionable(r) {
			continue
		}
		if to := p.bestTarget(r); to != nil {
			p.propose(Op{Kind: AddReplica, Range: r.ID, To: to.ID,
				Reason: fmt.Sprintf("repair: %d of %d voters alive", alive, p.target)})
		}
	}
}

// decommission moves every replica off the decommissioning nodes.
func (p *plan) decommission() {
	for _, id := range p.nodeIDs {
		if p.nodes[id].State != NodeDecommissioning {
			continue
		}
		for _, r := range p.rangesOn(id) {
			p.moveOff(r, id, "decommission")
		}
	}
}

// moveOff proposes the next step in taking r's replica off the node: its
// leadership first if it leads; a removal if the replica is a non-voter or
// the other voters meet the target, and the removal is safe; else a move
// to the best target.
func (p *plan) moveOff(r *RangeInfo, from uint64, reason string) bool {
	if !p.actionable(r) {
		return false
	}
	if r.Leader == from {
		return p.transferAway(r, reason)
	}
	rep, _ := replicaOn(r, from)
	spare := rep.Role == NonVoter || voters(r, from, p.notDead) >= p.target
	if spare && p.canRemove(r, from) {
		return p.propose(Op{Kind: RemoveReplica, Range: r.ID, From: from, Reason: reason})
	}
	if rep.Role == NonVoter || !p.canMoveFrom(r, from) {
		return false
	}
	to := p.bestTarget(r)
	return to != nil && p.propose(Op{Kind: MoveReplica, Range: r.ID, From: from, To: to.ID, Reason: reason})
}

// transferAway hands r's leadership to its best other voter, so that the
// leader's replica can go.
func (p *plan) transferAway(r *RangeInfo, reason string) bool {
	return p.transferTo(r, p.leaderTarget(r, r.Leader, p.hotLine()), reason)
}

// handOn is transferAway by choice: only to a voter that takes the
// leadership by choice, so that it is not handed straight back.
func (p *plan) handOn(r *RangeInfo, reason string) bool {
	line := p.hotLine()
	to := p.leaderTarget(r, r.Leader, line)
	return to.takesLeadership(r, line) && p.transferTo(r, to, reason)
}

// transferTo proposes the transfer unless r's leader is dead or unknown:
// only a live leader can hand on its leadership; Raft elects a new one.
func (p *plan) transferTo(r *RangeInfo, to *nodeLoad, reason string) bool {
	return to != nil && p.state(r.Leader) != NodeDead && p.propose(Op{Kind: TransferLeader, Range: r.ID, From: r.Leader, To: to.ID,
		Reason: reason + ": leader steps off first"})
}

// removeExcess removes one replica from each range that has a non-voter no
// operation is promoting, or more voters than the target.
func (p *plan) removeExcess() {
	for _, r := range p.ranges {
		if !p.actionable(r) {
			continue
		}
		victim, ok := p.excessReplica(r)
		if !ok {
			continue
		}
		reason := fmt.Sprintf("excess: %d voters, target %d", voters(r, 0, allNodes), p.target)
		if victim.Role == NonVoter {
			reason = "excess: stray non-voter"
		}
		if r.Leader == victim.NodeID {
			p.transferAway(r, reason)
		} else if p.canRemove(r, victim.NodeID) {
			p.propose(Op{Kind: RemoveReplica, Range: r.ID, From: victim.NodeID, Reason: reason})
		}
	}
}

// removalRank orders node states for removing a replica, first to last.
var removalRank = [...]int{NodeDead: 0, NodeDecommissioning: 1, NodeSuspect: 2, NodeLive: 3}

// excessReplica picks the replica to remove: a non-voter, else, when there
// are voters beyond the target, the one on a dead node, then on a
// decommissioning one, then a suspect one, then a follower on the node with
// most replicas, then least disk room, then highest ID. The leader goes
// last among equals: choosing it would move its leadership, which changes
// no count, so the next pass would choose it again on its new node.
func (p *plan) excessReplica(r *RangeInfo) (Replica, bool) {
	reps := sortedReplicas(r)
	for _, rep := range reps {
		if rep.Role == NonVoter {
			return rep, true
		}
	}
	if voters(r, 0, allNodes) <= p.target {
		return Replica{}, false
	}
	worse := func(a, b Replica) bool {
		sa, sb := p.state(a.NodeID), p.state(b.NodeID)
		if sa != sb {
			return removalRank[sa] < removalRank[sb]
		}
		if aLeads, bLeads := a.NodeID == r.Leader, b.NodeID == r.Leader; aLeads != bLeads {
			return bLeads
		}
		na, nb := p.nodes[a.NodeID], p.nodes[b.NodeID]
		if na == nil || nb == nil {
			return a.NodeID > b.NodeID
		}
		if na.replicas != nb.replicas {
			return na.replicas > nb.replicas
		}
		if na.roomBytes() != nb.roomBytes() {
			return na.roomBytes() < nb.roomBytes()
		}
		return a.NodeID > b.NodeID
	}
	victim := reps[0]
	for _, rep := range reps[1:] {
		if worse(rep, victim) {
			victim = rep
		}
	}
	return victim, true
}
