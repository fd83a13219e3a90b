package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// sim plays the executor and Raft for the schedulers' tests: it runs
// Schedule, checks every proposed op against the snapshot it was proposed
// on, applies the ops (after a random number of passes when rng is set) and
// checks the ranges after each membership step. The checks are written
// apart from the schedulers' own predicates so that they catch their bugs.
type sim struct {
	c             Cluster
	limits        Limits
	rng           *rand.Rand
	pending       []pendingOp
	nextReplicaID uint64
}

type pendingOp struct {
	op         Op
	passesLeft int
}

// run makes passes until nothing is proposed or in flight, returning the
// passes made and the ops applied. It fails past maxPasses: the schedulers
// must reach a fixed point.
func (s *sim) run(maxPasses int, onPass func(pass int, ops []Op)) (passes, applied int, err error) {
	for passes = 1; passes <= maxPasses; passes++ {
		wasPending := len(s.pending) > 0
		ops, err := s.pass()
		if err != nil {
			return passes, applied, fmt.Errorf("pass %d: %w", passes, err)
		}
		if onPass != nil && len(ops) > 0 {
			onPass(passes, ops)
		}
		applied += len(ops)
		// A fixed point needs Raft settled too: a range whose leader
		// is dead waits for an election.
		if len(ops) == 0 && !wasPending && !s.elect() {
			return passes - 1, applied, nil
		}
	}
	return maxPasses, applied, fmt.Errorf("no fixed point after %d passes", maxPasses)
}

// pass lets Raft elect where leaders are gone (with rng, only on some
// passes, so snapshots show dead leaders too), schedules, checks, and
// completes the ops whose time has come.
func (s *sim) pass() ([]Op, error) {
	if s.rng == nil || s.rng.IntN(2) == 0 {
		s.elect()
	}
	s.c.InFlight = s.c.InFlight[:0]
	for _, p := range s.pending {
		s.c.InFlight = append(s.c.InFlight, p.op)
	}
	ops := Schedule(&s.c, s.limits)
	if err := checkOps(&s.c, s.limits, ops); err != nil {
		return ops, err
	}
	for _, op := range ops {
		delay := 0
		if s.rng != nil {
			delay = s.rng.IntN(3)
		}
		if delay > 0 && op.To != 0 && op.Kind != TransferLeader {
			s.addNonVoter(op)
		}
		s.pending = append(s.pending, pendingOp{op, delay})
	}
	var still []pendingOp
	for _, p := range s.pending {
		if p.passesLeft > 0 {
			still = append(still, pendingOp{p.op, p.passesLeft - 1})
			continue
		}
		if err := s.apply(p.op); err != nil {
			return ops, fmt.Errorf("%v: %w", p.op, err)
		}
	}
	s.pending = still
	return ops, nil
}

// elect gives a range whose leader is dead or gone the lowest-ID voter on a
// node that is up, as Raft would; a range without a quorum has no leader.
// Suspect nodes are slow, not down. It reports whether any leader changed.
func (s *sim) elect() bool {
	changed := false
	up := func(id uint64) bool { st, ok := simState(&s.c, id); return ok && st != NodeDead }
	for i := range s.c.Ranges {
		r := &s.c.Ranges[i]
		if isVoter(r, r.Leader) && up(r.Leader) && countUp(&s.c, r, up) >= quorumOf(r) {
			continue
		}
		leader := uint64(0)
		if countUp(&s.c, r, up) >= quorumOf(r) {
			for _, id := range voterNodes(r) {
				if up(id) {
					leader = id
					break
				}
			}
		}
		changed = changed || leader != r.Leader
		r.Leader = leader
	}
	return changed
}

// apply carries out op as the executor would, checking the range after each
// membership step.
func (s *sim) apply(op Op) error {
	r := simRange(&s.c, op.Range)
	if op.Kind == TransferLeader {
		if isVoter(r, op.To) {
			r.Leader = op.To
		}
		return nil
	}
	if op.To != 0 {
		s.addNonVoter(op)
		promote := func() {
			i := slices.IndexFunc(r.Replicas, func(rep Replica) bool { return rep.NodeID == op.To })
			r.Replicas[i].Role = Voter
		}
		if err := stepRange(&s.c, r, promote); err != nil {
			return err
		}
	}
	if op.From != 0 {
		step := func() {
			r.Replicas = slices.DeleteFunc(r.Replicas, func(rep Replica) bool { return rep.NodeID == op.From })
			if r.Leader == op.From {
				r.Leader = 0 // it steps down; Raft elects another
			}
			if n := simNode(&s.c, op.From); n != nil {
				n.DiskUsedBytes -= r.SizeBytes
			}
		}
		if err := stepRange(&s.c, r, step); err != nil {
			return err
		}
	}
	return nil
}

// addNonVoter is an add's first step: the new replica joins as a non-voter
// and takes the range's data. A slow op shows it in the snapshots the
// schedulers see while the op is in flight.
func (s *sim) addNonVoter(op Op) {
	r := simRange(&s.c, op.Range)
	if slices.Contains(replicaNodes(r), op.To) {
		return
	}
	s.nextReplicaID++
	r.Replicas = append(r.Replicas, Replica{NodeID: op.To, ReplicaID: s.nextReplicaID, Role: NonVoter})
	simNode(&s.c, op.To).DiskUsedBytes += r.SizeBytes
}

// stepRange takes one membership step and checks the range after it: no
// node holds two of its replicas, and if it had a quorum of voters on live
// and decommissioning nodes before the step, it still has one.
func stepRange(c *Cluster, r *RangeInfo, step func()) error {
	hadQuorum := countUp(c, r, firmlyUp(c)) >= quorumOf(r)
	step()
	seen := map[uint64]bool{}
	for _, id := range replicaNodes(r) {
		if seen[id] {
			return fmt.Errorf("range %d has two replicas on node %d", r.ID, id)
		}
		seen[id] = true
	}
	if hadQuorum && countUp(c, r, firmlyUp(c)) < quorumOf(r) {
		return fmt.Errorf("range %d fell below quorum: %v", r.ID, r.Replicas)
	}
	return nil
}

// checkOps checks ops against the snapshot they were proposed on.
func checkOps(c *Cluster, limits Limits, ops []Op) error {
	limits = limits.withDefaults()
	if n := len(c.InFlight) + len(ops); len(ops) > 0 && n > limits.Total {
		return fmt.Errorf("%d ops under way, total limit %d", n, limits.Total)
	}
	snapshots := map[uint64]int{}
	taken := map[uint64]bool{}
	incoming := map[uint64]int64{}
	for i, op := range append(slices.Clone(c.InFlight), ops...) {
		r := simRange(c, op.Range)
		if r == nil {
			return fmt.Errorf("%v: no such range", op)
		}
		// What the snapshot shows of an op in flight is in the nodes' disk.
		if op.Kind != TransferLeader && !slices.Contains(replicaNodes(r), op.To) {
			incoming[op.To] += r.SizeBytes
		}
		if op.Kind != TransferLeader && slices.Contains(replicaNodes(r), op.From) {
			incoming[op.From] -= r.SizeBytes
		}
		// The leader sends the snapshot, if it is there to send it.
		leader := r.Leader
		if st, _ := simState(c, leader); st == NodeDead || !isVoter(r, leader) {
			leader = 0
		}
		snapshot := op.Kind == AddReplica || op.Kind == MoveReplica
		if snapshot {
			snapshots[op.To]++
			snapshots[leader]++
		}
		if taken[op.Range] {
			return fmt.Errorf("%v: second op for the range", op)
		}
		taken[op.Range] = true
		if i < len(c.InFlight) {
			continue
		}
		if err := checkOp(c, r, op, incoming[op.To]); err != nil {
			return fmt.Errorf("%v: %w", op, err)
		}
		for _, id := range []uint64{op.To, leader} {
			if snapshot && id != 0 && snapshots[id] > limits.PerNode {
				return fmt.Errorf("%v: node %d at %d snapshots, limit %d", op, id, snapshots[id], limits.PerNode)
			}
		}
	}
	return nil
}

// checkOp checks one op; incoming is what the plan has sent to op.To so far.
func checkOp(c *Cluster, r *RangeInfo, op Op, incoming int64) error {
	up := func(id uint64) bool { st, ok := simState(c, id); return ok && st != NodeDead }
	if countUp(c, r, up) < quorumOf(r) {
		return fmt.Errorf("range has lost quorum")
	}
	firm := countUp(c, r, firmlyUp(c))
	switch op.Kind {
	case AddReplica, MoveReplica:
		to := simNode(c, op.To)
		if to == nil || to.State != NodeLive || slices.Contains(replicaNodes(r), op.To) {
			return fmt.Errorf("target cannot take a replica")
		}
		const highWater = 0.8
		if to.DiskQuotaBytes > 0 && float64(to.DiskUsedBytes+incoming) >= highWater*float64(to.DiskQuotaBytes) {
			return fmt.Errorf("target disk over high water")
		}
		if op.Kind == MoveReplica && !(isVoter(r, op.From) && firm-firmlyUpAt(c, op.From)+1 >= (len(voterNodes(r))+1)/2+1) {
			return fmt.Errorf("move would drop below quorum")
		}
	case RemoveReplica:
		if !slices.Contains(replicaNodes(r), op.From) {
			return fmt.Errorf("no replica to remove")
		}
		if isVoter(r, op.From) && firm-firmlyUpAt(c, op.From) < quorumOf(r) {
			return fmt.Errorf("removal would drop below quorum")
		}
	case TransferLeader:
		to := simNode(c, op.To)
		if st, _ := simState(c, op.From); op.From != r.Leader || st == NodeDead ||
			!isVoter(r, op.To) || to == nil || to.State != NodeLive {
			return fmt.Errorf("bad transfer (leader %d)", r.Leader)
		}
	}
	return nil
}

// firmlyUp: live and decommissioning nodes surely answer.
func firmlyUp(c *Cluster) func(uint64) bool {
	return func(id uint64) bool {
		st, ok := simState(c, id)
		return ok && (st == NodeLive || st == NodeDecommissioning)
	}
}

func firmlyUpAt(c *Cluster, id uint64) int {
	if firmlyUp(c)(id) {
		return 1
	}
	return 0
}

func countUp(c *Cluster, r *RangeInfo, up func(uint64) bool) int {
	n := 0
	for _, id := range voterNodes(r) {
		if up(id) {
			n++
		}
	}
	return n
}

func replicaNodes(r *RangeInfo) []uint64 {
	var ids []uint64
	for _, rep := range r.Replicas {
		ids = append(ids, rep.NodeID)
	}
	return ids
}

func voterNodes(r *RangeInfo) []uint64 {
	var ids []uint64
	for _, rep := range r.Replicas {
		if rep.Role == Voter {
			ids = append(ids, rep.NodeID)
		}
	}
	slices.Sort(ids)
	return ids
}

func quorumOf(r *RangeInfo) int { return len(voterNodes(r))/2 + 1 }

func isVoter(r *RangeInfo, nodeID uint64) bool { return slices.Contains(voterNodes(r), nodeID) }

func simState(c *Cluster, id uint64) (NodeState, bool) {
	if n := simNode(c, id); n != nil {
		return n.State, true
	}
	return NodeDead, false
}

func simNode(c *Cluster, id uint64) *Node {
	for i := range c.Nodes {
		if c.Nodes[i].ID == id {
			return &c.Nodes[i]
		}
	}
	return nil
}

func simRange(c *Cluster, id uint64) *RangeInfo {
	for i := range c.Ranges {
		if c.Ranges[i].ID == id {
			return &c.Ranges[i]
		}
	}
	return nil
}
