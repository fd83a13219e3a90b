package placement

import (
	"cmp"
	"math"
	"slices"
)

// plan is one Schedule call's working state: the snapshot indexed for
// lookup, node counts projected through the operations in flight and those
// proposed so far, and the limits' accounting. Maps serve lookups only;
// every walk goes over a slice sorted by ID.
type plan struct {
	limits Limits
	// target is the voter count each range should have.
	target  int
	nodes   map[uint64]*nodeLoad
	nodeIDs []uint64
	ranges  []*RangeInfo
	rangeOf map[uint64]*RangeInfo
	// busy marks the ranges with an operation in flight or proposed.
	busy map[uint64]bool
	// started counts the operations in flight and proposed, for Limits.Total.
	started int
	ops     []Op
}

// nodeLoad is a node with its counts as they will be once the operations in
// flight and proposed have run. DiskUsedBytes is projected the same way.
type nodeLoad struct {
	Node
	replicas int
	leaders  int
	qps      float64
	// snapshots counts the snapshot-carrying operations this node sends or
	// receives, for Limits.PerNode.
	snapshots int
}

func newPlan(c *Cluster, limits Limits) *plan {
	p := &plan{
		limits:  limits.withDefaults(),
		nodes:   make(map[uint64]*nodeLoad, len(c.Nodes)),
		rangeOf: make(map[uint64]*RangeInfo, len(c.Ranges)),
		busy:    make(map[uint64]bool),
	}
	nonDead := 0
	for _, n := range c.Nodes {
		p.nodes[n.ID] = &nodeLoad{Node: n}
		p.nodeIDs = append(p.nodeIDs, n.ID)
		if n.State != NodeDead {
			nonDead++
		}
	}
	slices.Sort(p.nodeIDs)
	p.target = c.Replicas
	if p.target <= 0 {
		p.target = 3
	}
	p.target = min(p.target, nonDead)

	for i := range c.Ranges {
		r := &c.Ranges[i]
		p.ranges = append(p.ranges, r)
		p.rangeOf[r.ID] = r
		for _, rep := range r.Replicas {
			if n := p.nodes[rep.NodeID]; n != nil {
				n.replicas++
			}
		}
		if n := p.nodes[r.Leader]; n != nil {
			n.leaders++
			n.qps += r.QPS
		}
	}
	slices.SortFunc(p.ranges, func(a, b *RangeInfo) int { return cmp.Compare(a.ID, b.ID) })
	for _, op := range c.InFlight {
		p.account(op)
	}
	return p
}

// state is a node's state; a node missing from the snapshot, or in a state
// the schedulers do not know, counts as dead.
func (p *plan) state(nodeID uint64) NodeState {
	if n := p.nodes[nodeID]; n != nil && n.State >= NodeLive && n.State <= NodeDecommissioning {
		return n.State
	}
	return NodeDead
}

// reachable: the node answers for certain, so its votes can be relied on.
// A suspect node's replicas count toward replication but not toward safety.
func (p *plan) reachable(nodeID uint64) bool {
	s := p.state(nodeID)
	return s == NodeLive || s == NodeDecommissioning
}

func (p *plan) notDead(nodeID uint64) bool { return p.state(nodeID) != NodeDead }

func quorum(voters int) int { return voters/2 + 1 }

// voters counts the range's voters on nodes that satisfy ok, leaving out
// the one on skip.
func voters(r *RangeInfo, skip uint64, ok func(uint64) bool) int {
	n := 0
	for _, rep := range r.Replicas {
		if rep.Role == Voter && rep.NodeID != skip && ok(rep.NodeID) {
			n++
		}
	}
	return n
}

func allNodes(uint64) bool { return true }

// hasQuorum: enough of the range's voters may be up to commit a change.
func (p *plan) hasQuorum(r *RangeInfo) bool {
	return voters(r, 0, p.notDead) >= quorum(voters(r, 0, allNodes))
}

// actionable: the range may take an operation in this plan.
func (p *plan) actionable(r *RangeInfo) bool {
	return !p.busy[r.ID] && p.hasQuorum(r)
}

// canRemove: after removing the replica on nodeID, the reachable voters
// still make a quorum of the voters the range has now.
func (p *plan) canRemove(r *RangeInfo, nodeID uint64) bool {
	return voters(r, nodeID, p.reachable) >= quorum(voters(r, 0, allNodes))
}

// canMoveFrom: with the new replica added on a live node and the one on
// from removed, the reachable voters make a quorum of the larger group the
// move passes through.
func (p *plan) canMoveFrom(r *RangeInfo, from uint64) bool {
	return voters(r, from, p.reachable)+1 >= quorum(voters(r, 0, allNodes)+1)
}

func replicaOn(r *RangeInfo, nodeID uint64) (Replica, bool) {
	for _, rep := range r.Replicas {
		if rep.NodeID == nodeID {
			return rep, true
		}
	}
	return Replica{}, false
}

// hasRoom: the node stays below its disk high-water mark after taking
// sizeBytes more.
func (n *nodeLoad) hasRoom(sizeBytes int64) bool {
	return n.DiskQuotaBytes == 0 ||
		float64(n.DiskUsedBytes+sizeBytes) < diskHighWater*float64(n.DiskQuotaBytes)
}

// roomBytes is the node's disk left below its quota.
func (n *nodeLoad) roomBytes() int64 {
	if n.DiskQuotaBytes == 0 {
		return math.MaxInt64
	}
	return n.DiskQuotaBytes - n.DiskUsedBytes
}

func (n *nodeLoad) overShedWater() bool {
	return n.DiskQuotaBytes > 0 && float64(n.DiskUsedBytes) > diskShedWater*float64(n.DiskQuotaBytes)
}

// canSnapshot: the node may send or receive one more snapshot.
func (p *plan) canSnapshot(nodeID uint64) bool {
	n := p.nodes[nodeID]
	return n == nil || n.snapshots < p.limits.PerNode
}

// sender is the node that streams r's snapshot to a new replica: its
// leader, unless unknown, dead or no longer a voter (a new leader will be
// elected).
func (p *plan) sender(r *RangeInfo) uint64 {
	if rep, ok := replicaOn(r, r.Leader); !ok || rep.Role != Voter || p.state(r.Leader) == NodeDead {
		return 0
	}
	return r.Leader
}

// canReceive: a new replica of r may go on the node.
func (p *plan) canReceive(r *RangeInfo, n *nodeLoad) bool {
	_, holds := replicaOn(r, n.ID)
	return n.State == NodeLive && !holds && n.hasRoom(r.SizeBytes) &&
		p.canSnapshot(n.ID) && p.canSnapshot(p.sender(r))
}

// bestTarget picks the node for a new replica of r: fewest replicas, then
// most disk room, then lowest ID. Nil if no node can take it.
func (p *plan) bestTarget(r *RangeInfo) *nodeLoad {
	var best *nodeLoad
	for _, id := range p.nodeIDs {
		n := p.nodes[id]
		if !p.canReceive(r, n) {
			continue
		}
		if best == nil || n.replicas < best.replicas ||
			n.replicas == best.replicas && n.roomBytes() > best.roomBytes() {
			best = n
		}
	}
	return best
}

// hotLine is the load above which a node is hot.
func (p *plan) hotLine() float64 {
	total, live := 0.0, 0
	for _, id := range p.nodeIDs {
		if n := p.nodes[id]; n.State == NodeLive {
			total += n.qps
			live++
		}
	}
	if live == 0 {
		return math.Inf(1)
	}
	mean := total / float64(live)
	return max(mean*hotQPSRatio, mean+hotQPSMinimum)
}

// leaderTarget picks a live voter of r other than from to take its
// leadership: one below its shed water first (a node shedding disk hands
// leaderships on), then one that stays at or below line, then fewest
// leaders, then least load, then lowest ID. Nil if r has no such voter.
func (p *plan) leaderTarget(r *RangeInfo, from uint64, line float64) *nodeLoad {
	var best *nodeLoad
	better := func(n *nodeLoad) bool {
		if n.overShedWater() != best.overShedWater() {
			return !n.overShedWater()
		}
		nCool, bestCool := n.qps+r.QPS <= line, best.qps+r.QPS <= line
		if nCool != bestCool {
			return nCool
		}
		if n.leaders != best.leaders {
			return n.leaders < best.leaders
		}
		return n.qps < best.qps
	}
	for _, rep := range sortedReplicas(r) {
		n := p.nodes[rep.NodeID]
		if rep.Role != Voter || rep.NodeID == from || n == nil || n.State != NodeLive {
			continue
		}
		if best == nil || better(n) {
			best = n
		}
	}
	return best
}

// takesLeadership: n may take r's leadership as a balancing choice, not a
// forced one: it is not shedding disk and stays at or below line.
func (n *nodeLoad) takesLeadership(r *RangeInfo, line float64) bool {
	return n != nil && !n.overShedWater() && n.qps+r.QPS <= line
}

func sortedReplicas(r *RangeInfo) []Replica {
	reps := slices.Clone(r.Replicas)
	slices.SortFunc(reps, func(a, b Replica) int { return cmp.Compare(a.NodeID, b.NodeID) })
	return reps
}

// rangesOn returns the ranges with a replica on the node, in ID order.
func (p *plan) rangesOn(nodeID uint64) []*RangeInfo {
	var out []*RangeInfo
	for _, r := range p.ranges {
		if _, ok := replicaOn(r, nodeID); ok {
			out = append(out, r)
		}
	}
	return out
}

// full: no further operation fits under Limits.Total.
func (p *plan) full() bool { return p.started >= p.limits.Total }

// propose adds op to the plan if its range is free and the limits allow it.
func (p *plan) propose(op Op) bool {
	r := p.rangeOf[op.Range]
	if r == nil || p.busy[op.Range] || p.full() {
		return false
	}
	if op.sendsSnapshot() && !(p.canSnapshot(op.To) && p.canSnapshot(p.sender(r))) {
		return false
	}
	p.account(op)
	p.ops = append(p.ops, op)
	return true
}

// account charges op to the limits, marks its range busy and projects its
// effect on node counts, skipping what the snapshot already shows (an op in
// flight may be half done).
func (p *plan) account(op Op) {
	p.started++
	p.busy[op.Range] = true
	r := p.rangeOf[op.Range]
	if r == nil {
		return
	}
	if op.sendsSnapshot() {
		for _, id := range []uint64{op.To, p.sender(r)} {
			if n := p.nodes[id]; n != nil {
				n.snapshots++
			}
		}
	}
	if to := p.nodes[op.To]; to != nil && op.Kind != TransferLeader {
		if _, shown := replicaOn(r, op.To); !shown {
			to.replicas++
			to.DiskUsedBytes += r.SizeBytes
		}
	}
	if from := p.nodes[op.From]; from != nil && op.Kind != TransferLeader {
		if _, shown := replicaOn(r, op.From); shown {
			from.replicas--
			from.DiskUsedBytes -= r.SizeBytes
		}
	}
	if op.Kind == TransferLeader && r.Leader != op.To {
		if from := p.nodes[r.Leader]; from != nil {
			from.leaders--
			from.qps -= r.QPS
		}
		if to := p.nodes[op.To]; to != nil {
			to.leaders++
			to.qps += r.QPS
		}
	}
}
