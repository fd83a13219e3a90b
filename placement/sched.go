package placement

import (
	"fmt"
	"strings"
)

// The schedulers decide where ranges live. Each is a pure function of a
// Cluster snapshot: no clocks, no I/O, no randomness, no map iteration order,
// so the same snapshot always yields the same operations. The meta range's
// leader runs Schedule periodically and hands the operations to an executor,
// which carries them out through Raft membership changes.

// NodeState is what liveness says of a node, as the schedulers see it.
type NodeState int

const (
	// NodeLive heartbeats; it takes new replicas and leaderships.
	NodeLive NodeState = iota
	// NodeSuspect has missed heartbeats but is not yet dead. It takes nothing
	// new, but its replicas still count toward their ranges' replication.
	NodeSuspect
	// NodeDead has been unseen for longer than --dead-node-timeout. Its
	// replicas count as lost and are re-created elsewhere.
	NodeDead
	// NodeDecommissioning is being drained: its replicas move off and it
	// takes nothing new. It still answers, so its replicas count.
	NodeDecommissioning
)

var nodeStateNames = [...]string{"live", "suspect", "dead", "decommissioning"}

func (s NodeState) String() string {
	if s < 0 || int(s) >= len(nodeStateNames) {
		return fmt.Sprintf("NodeState(%d)", int(s))
	}
	return nodeStateNames[s]
}

// Node is one node's liveness and disk use.
type Node struct {
	ID    uint64
	State NodeState
	// DiskUsedBytes is the node's storage in use; DiskQuotaBytes its
	// --quota-backend-bytes, where 0 means unlimited.
	DiskUsedBytes  int64
	DiskQuotaBytes int64
}

// ReplicaRole is a replica's part in its range's Raft group.
type ReplicaRole int

const (
	// Voter counts toward the range's quorum.
	Voter ReplicaRole = iota
	// NonVoter receives the log but does not vote: a replica catching up
	// before its promotion.
	NonVoter
)

// Replica is one member of a range's Raft group.
type Replica struct {
	NodeID    uint64
	ReplicaID uint64
	Role      ReplicaRole
}

// RangeInfo is one range as the schedulers see it: its descriptor's members
// and its recent load.
type RangeInfo struct {
	ID       uint64
	Replicas []Replica
	// Leader is the node holding the Raft leadership, 0 if unknown.
	Leader    uint64
	SizeBytes int64
	// QPS is the range's request rate, all served by its leader.
	QPS float64
	// KeepLeader: the range's leadership moves only when its leader's
	// replica must (a decommission, a removal), never to even out leaders
	// or load (the range whose leader keeps the lease clock).
	KeepLeader bool
}

// Cluster is the snapshot the schedulers decide from.
type Cluster struct {
	Nodes  []Node
	Ranges []RangeInfo
	// Replicas is the number of voters each range should have (--replicas;
	// 0 means 3). With fewer non-dead nodes than that, the target is their
	// count.
	Replicas int
	// InFlight are the operations the executor has under way. Their ranges
	// are left alone, they count toward Limits, and node counts assume their
	// effect where the snapshot does not show it yet.
	InFlight []Op
}

// OpKind says what an Op does.
type OpKind int

const (
	// AddReplica adds a replica on To: a non-voter first, promoted to voter
	// once it has caught up.
	AddReplica OpKind = iota + 1
	// RemoveReplica removes the replica on From.
	RemoveReplica
	// MoveReplica is AddReplica on To, then RemoveReplica on From, so the
	// range never has fewer voters than before.
	MoveReplica
	// TransferLeader hands the Raft leadership from From to To.
	TransferLeader
)

var opKindNames = [...]string{"", "add-replica", "remove-replica", "move-replica", "transfer-leader"}

func (k OpKind) String() string {
	if k <= 0 || int(k) >= len(opKindNames) {
		return fmt.Sprintf("OpKind(%d)", int(k))
	}
	return opKindNames[k]
}

// Op is one operation proposed for one range.
type Op struct {
	Kind  OpKind
	Range uint64
	// From and To are node IDs: AddReplica sets only To, RemoveReplica only
	// From, MoveReplica and TransferLeader both.
	From, To uint64
	// Reason is a short cause for logs and `tessera ctl`.
	Reason string
}

func (o Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s range=%d", o.Kind, o.Range)
	if o.From != 0 {
		fmt.Fprintf(&b, " from=%d", o.From)
	}
	if o.To != 0 {
		fmt.Fprintf(&b, " to=%d", o.To)
	}
	if o.Reason != "" {
		fmt.Fprintf(&b, ": %s", o.Reason)
	}
	return b.String()
}

// sendsSnapshot reports whether the op brings a new replica up, which
// streams a snapshot of the range from its leader to To.
func (o Op) sendsSnapshot() bool { return o.Kind == AddReplica || o.Kind == MoveReplica }

// Limits bound the operations under way at once, in flight and proposed
// together. A zero field takes its default.
type Limits struct {
	// PerNode bounds the snapshot-carrying operations (AddReplica,
	// MoveReplica) a node sends, as the range's leader, or receives.
	PerNode int
	// Total bounds all operations in the cluster.
	Total int
}

// DefaultLimits: two snapshots per node let a node send one while it
// receives one, or start the next while the last one applies, without
// taking its disk and network from client traffic; sixteen in all keep the
// rate of membership changes readable and the work a meta leader change
// abandons small.
var DefaultLimits = Limits{PerNode: 2, Total: 16}

func (l Limits) withDefaults() Limits {
	if l.PerNode <= 0 {
		l.PerNode = DefaultLimits.PerNode
	}
	if l.Total <= 0 {
		l.Total = DefaultLimits.Total
	}
	return l
}

// Thresholds. Disk fractions are of a node's own quota; load is the summed
// QPS of the ranges a node leads.
const (
	// diskHighWater: a node takes no replica that would bring it to this
	// fraction of its quota. The rest is room for its ranges to grow and for
	// compactions and snapshots, far from the quota's NOSPACE alarm.
	diskHighWater = 0.8
	// diskShedWater: above this a node moves replicas off, largest first. The
	// gap to diskHighWater absorbs growth in place before paying for moves.
	diskShedWater = 0.9
	// hotQPSRatio and hotQPSMinimum: a node is hot when its load exceeds the
	// mean by both 25% and 100 QPS; the ratio ignores ordinary spread, the
	// minimum keeps an idle cluster from trading leaderships over noise.
	hotQPSRatio   = 1.25
	hotQPSMinimum = 100
)

// scheduler is one independent concern; Schedule runs them in order.
type scheduler struct {
	name string
	run  func(*plan)
}

// schedulers, most urgent first: restore replication, drain, remove what is
// surplus, relieve full disks, then balance replicas, leaders and load.
var schedulers = []scheduler{
	{"repair", (*plan).repair},
	{"decommission", (*plan).decommission},
	{"excess", (*plan).removeExcess},
	{"disk", (*plan).shedDisk},
	{"replica-balance", (*plan).balanceReplicas},
	{"leader-balance", (*plan).balanceLeaders},
	{"load", (*plan).balanceLoad},
}

// Schedule proposes the operations the cluster needs now, most urgent first,
// at most one per range and none for a range with an operation in flight,
// stopping at the limits.
func Schedule(c *Cluster, limits Limits) []Op {
	return scheduleWith(c, limits, schedulers)
}

func scheduleWith(c *Cluster, limits Limits, run []scheduler) []Op {
	p := newPlan(c, limits)
	for _, s := range run {
		if p.full() {
			break
		}
		s.run(p)
	}
	return p.ops
}

// LostQuorum returns, in ID order, the ranges whose voters on non-dead nodes
// are fewer than a quorum. Such a range cannot change its membership, so the
// schedulers leave it alone; an operator must recover it.
func LostQuorum(c *Cluster) []uint64 {
	p := newPlan(c, Limits{})
	var lost []uint64
	for _, r := range p.ranges {
		if !p.hasQuorum(r) {
			lost = append(lost, r.ID)
		}
	}
	return lost
}
