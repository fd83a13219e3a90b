package node

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/placement"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// TestingKnobs are hooks for tests only: production leaves them zero.
type TestingKnobs struct {
	// NodeHeartbeatInterval replaces the 1 s between a node's heartbeats to
	// the meta leader (liveness for placement).
	NodeHeartbeatInterval time.Duration
	// LiveKeysInterval replaces the minute between recounts of the node's
	// live keys (etcd_debugging_mvcc_keys_total).
	LiveKeysInterval time.Duration
	// AfterRevisionsTaken is passed to every range replica (see
	// shard.Config.AfterRevisionsTaken).
	AfterRevisionsTaken func(rangeID uint64, first int64)
	// BeforeApply runs as a range replica's state machine starts applying a
	// batch of entries (it may block, holding the range's applies back; see
	// statemachine.StoreOptions.BeforeUpdate).
	BeforeApply func(rangeID uint64)
	// RepeatRangeReads is passed to every range replica (see
	// shard.Config.RepeatRead).
	RepeatRangeReads func() bool
	// RangeRequestTimeout bounds one proposal or ReadIndex round of a range
	// replica (shard.Config.RequestTimeout); 0: its default.
	RangeRequestTimeout time.Duration
	// RangeMaxInFlight bounds each range replica's proposals in flight
	// (shard.Config.MaxInFlight); 0: its default.
	RangeMaxInFlight int
	// TxnSweepInterval replaces the minute between the meta leader's sweeps
	// of aborted records of writes spanning ranges.
	TxnSweepInterval time.Duration
	// HoldTimeout replaces how long a range stays held before its leader
	// settles the hold itself (3 s).
	HoldTimeout time.Duration
	// PlacementOpTimeout replaces the bound on one placement operation (2
	// minutes): an operation that hangs is given up and proposed again
	// sooner.
	PlacementOpTimeout time.Duration
	// BeforeIngestChunk runs before member 1 writes each chunk of a
	// snapshot it restores (it may block, holding the restore).
	BeforeIngestChunk func(seq uint64)
	// The router's knobs (AfterLeaseProof, AfterTxnHeld, …).
	router.TestingKnobs
	// DialNode, when set, opens every connection this node makes to another
	// node: the Raft transport's, the Internal service's (forwarded
	// requests, range feeds, the revision oracle), --join's, and the probes
	// of the members' Raft addresses at a new cluster's start. A test routes
	// them through a fault-injecting proxy with it.
	DialNode func(ctx context.Context, addr string) (net.Conn, error)
}

// TestingNode is what tests may ask of a running node beyond its gRPC
// services.
type TestingNode struct{ s *Node }

// Testing returns the node's test-only surface.
func (s *Node) Testing() TestingNode { return TestingNode{s} }

// Ranges describes this node's ranges in key order (what `tessera ctl ranges`
// shows).
func (t TestingNode) Ranges(ctx context.Context) ([]*tesserapb.RangeInfo, error) {
	s := t.s
	resp, err := s.Internal().ListRanges(ctx, &tesserapb.ListRangesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.Ranges, nil
}

// RecordedRanges returns the range descriptors the meta range records, in
// key order (a linearizable read).
func (t TestingNode) RecordedRanges(ctx context.Context) ([]*tesserapb.RangeDescriptor, error) {
	return meta.Ranges(ctx, t.s.meta, true)
}

// RegisteredNodes is how many nodes this node's replica of the registry
// knows the addresses of (0 when it cannot read it).
func (t TestingNode) RegisteredNodes(ctx context.Context) int {
	nodes, err := t.s.directory.Nodes(ctx)
	if err != nil {
		return 0
	}
	return len(nodes)
}

// RangeCount is the number of data ranges this node runs.
func (t TestingNode) RangeCount() int { return len(t.s.rangeList()) }

// SnapshotsTaken returns how many snapshots this node's replicas have taken
// to keep their Raft logs short (shard.Config.SnapshotEveryBytes).
func (t TestingNode) SnapshotsTaken() int64 {
	var n int64
	for _, r := range t.s.rangeList() {
		n += r.SnapshotsTaken()
	}
	return n
}

// SnapshotsRecovered counts the range snapshots this node has installed.
func (t TestingNode) SnapshotsRecovered() int64 { return t.s.store.SnapshotsRecovered() }

// TransferMetaLeadership asks the meta range to move its leader to the given
// node.
func (t TestingNode) TransferMetaLeadership(nodeID uint64) error {
	m, ok := t.s.metaMembership()
	if !ok {
		return meta.ErrNoLeader
	}
	for id := range m.voters {
		if replicaid.NodeOf(id) == nodeID {
			nodeID = id
		}
	}
	t.s.allocator.EndLease()
	return t.s.nh.RequestLeaderTransfer(meta.RangeID, nodeID)
}

// MetaLeader returns the meta range leader's node ID as this node knows it.
func (t TestingNode) MetaLeader() uint64 {
	id, _, _ := t.s.meta.Leader()
	return id
}

// knobOr is a duration knob when a test set it, else def.
func knobOr(knob, def time.Duration) time.Duration {
	if knob > 0 {
		return knob
	}
	return def
}

// TxnRecords returns how many records of writes spanning ranges this
// node's meta replica holds, and how many of them are aborts.
func (t TestingNode) TxnRecords() (all, aborted int) {
	for _, r := range t.s.meta.TxnRecords() {
		all++
		if !r.Committed {
			aborted++
		}
	}
	return all, aborted
}

// Placement describes what placement sees on this node, if it leads the
// meta range — every node's replicas, leaders, load and state, the
// operations running — and what it would propose now; "" otherwise.
func (t TestingNode) Placement(ctx context.Context) string {
	c, ops := t.s.placementView(ctx)
	if c == nil {
		return ""
	}
	var b strings.Builder
	replicas, leaders, qps := map[uint64]int{}, map[uint64]int{}, map[uint64]float64{}
	for _, r := range c.Ranges {
		for _, rep := range r.Replicas {
			replicas[rep.NodeID]++
		}
		leaders[r.Leader]++
		qps[r.Leader] += r.QPS
	}
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "node %d: state %v, %d replicas, %d leaders, %.0f qps, disk %d of %d\n",
			n.ID, n.State, replicas[n.ID], leaders[n.ID], qps[n.ID], n.DiskUsedBytes, n.DiskQuotaBytes)
	}
	for _, r := range c.Ranges {
		fmt.Fprintf(&b, "range %d: leader %d, %.0f qps, replicas %+v\n", r.ID, r.Leader, r.QPS, r.Replicas)
	}
	for _, op := range c.InFlight {
		fmt.Fprintf(&b, "running: %+v\n", op)
	}
	for _, op := range ops {
		fmt.Fprintf(&b, "would propose: %+v\n", op)
	}
	if len(ops) == 0 {
		b.WriteString("would propose nothing\n")
	}
	return b.String()
}

// IsLeader reports whether this node leads the first data range.
func (t TestingNode) IsLeader() bool { return t.s.leadsHomeRange() }

// TransferLeadership asks every data range to move its leader to the replica
// of the given node (position in --initial-cluster, from 1).
func (t TestingNode) TransferLeadership(nodeID uint64) error {
	var firstErr error
	for _, r := range t.s.rangeList() {
		if err := t.TransferRangeLeadership(r.RangeID(), nodeID); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// TransferRangeLeadership asks one range of this node's to move its leader
// to the replica of the given node; it does nothing where that node holds
// none.
func (t TestingNode) TransferRangeLeadership(rangeID, nodeID uint64) error {
	to, ok := t.s.replicaOf(rangeID, nodeID)
	if !ok {
		return nil
	}
	return t.s.nh.RequestLeaderTransfer(rangeID, to)
}

// PlaceOnce runs the placement schedulers once on this node, if it leads
// the meta range, and returns the operations it started.
func (t TestingNode) PlaceOnce() []placement.Op { return t.s.placeOnce() }

// RoutedRangeCount is how many ranges this node routes requests to: its
// own replicas and, refreshed from the meta range, the ranges held elsewhere.
func (t TestingNode) RoutedRangeCount() int {
	t.s.cache.Refresh()
	return t.s.cache.Len()
}

// ChangeReplicas adds a replica of a range on one node and/or removes the
// one on another (Internal.ChangeReplicas through this node).
func (t TestingNode) ChangeReplicas(ctx context.Context, rangeID, add, remove uint64) (*tesserapb.RangeDescriptor, error) {
	resp, err := t.s.Internal().ChangeReplicas(ctx, &tesserapb.ChangeReplicasRequest{RangeId: rangeID, AddNodeId: add, RemoveNodeId: remove})
	if err != nil {
		return nil, err
	}
	return resp.Range, nil
}

// RangeIDs lists the ranges this node holds a replica of, in order.
func (t TestingNode) RangeIDs() []uint64 {
	var ids []uint64
	for _, r := range t.s.rangeList() {
		ids = append(ids, r.RangeID())
	}
	return ids
}

// Decommission marks a node as leaving (Internal.Decommission through this
// node).
func (t TestingNode) Decommission(ctx context.Context, node string) error {
	_, err := t.s.Internal().Decommission(ctx, &tesserapb.DecommissionRequest{Node: node})
	return err
}

// MetaVoters is how many voting members the meta range has, as this node's
// replica knows them.
func (t TestingNode) MetaVoters() int {
	m, _ := t.s.metaMembership()
	return len(m.voters)
}

// MetaMembers returns the nodes holding the meta range's voters and its
// non-voting replicas, as this node's replica knows them.
func (t TestingNode) MetaMembers() (voters, learners []uint64) {
	m, _ := t.s.metaMembership()
	for id := range m.voters {
		voters = append(voters, replicaid.NodeOf(id))
	}
	for id := range m.learners {
		learners = append(learners, replicaid.NodeOf(id))
	}
	slices.Sort(voters)
	slices.Sort(learners)
	return voters, learners
}

// MetaReplicaID is this node's replica ID in the meta range.
func (t TestingNode) MetaReplicaID() uint64 { return t.s.meta.ReplicaID() }

// CorruptValue overwrites the value of key's newest version in this node's
// store, outside Raft, as a disk gone bad would.
func (t TestingNode) CorruptValue(key, value string) error {
	return t.s.store.CorruptForTesting([]byte(key), []byte(value))
}
