package meta

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/raftinfo"
	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/internal/solevoter"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// RangeID is the Raft shard ID of the meta range.
const RangeID = 1

// metaRaft is what the allocator and the directory need of the meta range
// replica on this node.
type metaRaft interface {
	NodeID() uint64
	Leader() (leaderNodeID, term uint64, ok bool)
	Propose(ctx context.Context, cmd *tesserapb.MetaCommand) error
	// Read runs fn on the state; linearizable reads first confirm through
	// ReadIndex that this replica has applied everything committed before.
	Read(ctx context.Context, linearizable bool, fn func(*tesserapb.MetaState) (any, error)) (any, error)
	// ConfirmLeader returns nil if this replica led the meta range at some
	// point after the call began (a ReadIndex round).
	ConfirmLeader(ctx context.Context) error
	// Sole reports that the meta range has no other replica: ConfirmLeader
	// needs no round.
	Sole() bool
}

// Replica drives this node's replica of the meta range. A node's replica
// ID in the meta range is its node ID, with an incarnation above bit 32
// (internal/replicaid) once the replica was removed and the node added
// again: Dragonboat never takes back a removed replica ID.
type Replica struct {
	nh        *dragonboat.NodeHost
	nodeID    uint64
	replicaID atomic.Uint64
	// sole remembers whether this replica is the meta range's only voter.
	sole    solevoter.Flag
	session *client.Session
}

// NewReplica returns a driver for the meta replica already started on
// nh under replicaID.
func NewReplica(nh *dragonboat.NodeHost, nodeID, replicaID uint64) *Replica {
	m := &Replica{nh: nh, nodeID: nodeID, session: nh.GetNoOPSession(RangeID)}
	m.replicaID.Store(replicaID)
	return m
}

// NodeID of this node.
func (m *Replica) NodeID() uint64 { return m.nodeID }

// ReplicaID is this node's replica ID in the meta range.
func (m *Replica) ReplicaID() uint64 { return m.replicaID.Load() }

// Restarted records that this node's meta replica now runs as replicaID, a
// non-voting replica added again after the old one was removed.
func (m *Replica) Restarted(replicaID uint64) {
	m.replicaID.Store(replicaID)
	m.sole.NotSole()
}

// Leader returns the meta leader's node ID and term as this replica knows them.
func (m *Replica) Leader() (uint64, uint64, bool) {
	id, term, valid, err := m.nh.GetLeaderID(RangeID)
	if err != nil || !valid {
		return 0, term, false
	}
	return replicaid.NodeOf(id), term, true
}

// Propose proposes cmd and waits until it is applied.
func (m *Replica) Propose(ctx context.Context, cmd *tesserapb.MetaCommand) error {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	_, err = m.nh.SyncPropose(ctx, m.session, data)
	return err
}

// AllocateRangeID hands out a new range ID through the meta log.
func (m *Replica) AllocateRangeID(ctx context.Context) (uint64, error) {
	return m.allocate(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_AllocateRangeId{AllocateRangeId: &tesserapb.AllocateRangeIdCommand{}}})
}

// AllocateNodeID hands out a new node ID, at least minID, through the meta
// log.
func (m *Replica) AllocateNodeID(ctx context.Context, minID uint64) (uint64, error) {
	return m.allocate(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_AllocateNodeId{AllocateNodeId: &tesserapb.AllocateNodeIdCommand{MinId: minID}}})
}

// allocate proposes a command whose result value is the ID it hands out.
func (m *Replica) allocate(ctx context.Context, cmd *tesserapb.MetaCommand) (uint64, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return 0, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var id uint64
	err = withRetries(ctx, func() error {
		res, err := m.nh.SyncPropose(ctx, m.session, data)
		id = res.Value
		return err
	})
	return id, err
}

// ErrOtherRestore: the cluster records a restore from another snapshot.
var ErrOtherRestore = errors.New("meta: the cluster was restored from another snapshot")

// RecordRestore records a restore from the snapshot id at revision rev
// (RestoreCommand), done once every range has it.
func (m *Replica) RecordRestore(ctx context.Context, id []byte, rev int64, done bool) error {
	v, err := m.allocate(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_Restore{Restore: &tesserapb.RestoreCommand{SnapshotId: id, Revision: rev, Done: done}}})
	if err == nil && v == 0 {
		err = ErrOtherRestore
	}
	return err
}

// ProposeAuth proposes a change of the auth state and returns its result.
func (m *Replica) ProposeAuth(ctx context.Context, c *tesserapb.AuthCommand) (tesserapb.AuthResult, error) {
	v, err := m.allocate(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_Auth{Auth: c}})
	return tesserapb.AuthResult(v), err
}

// Read runs fn on the meta state.
func (m *Replica) Read(ctx context.Context, linearizable bool, fn func(*tesserapb.MetaState) (any, error)) (any, error) {
	if !linearizable {
		return m.nh.StaleRead(RangeID, fn)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return m.nh.SyncRead(ctx, RangeID, fn)
}

// Sole implements metaRaft: this replica is the meta range's only voter, as
// its membership says (a cluster of one node, or one that nodes joined
// without votes). The answer is kept; whoever adds a voter calls NotSole
// first.
func (m *Replica) Sole() bool {
	return m.sole.Sole(func() (sole, known bool) {
		si, ok := raftinfo.Shard(m.nh, RangeID)
		if !ok || len(si.Replicas) == 0 {
			return false, false
		}
		_, self := si.Replicas[m.ReplicaID()]
		return self && len(si.Replicas) == 1 && !si.IsNonVoting, true
	})
}

// NotSole says the meta range is getting another voter: from now on
// ConfirmLeader takes a round. Call it before proposing the change.
func (m *Replica) NotSole() { m.sole.NotSole() }

// ConfirmLeader implements metaRaft. A sole replica needs no round: no
// other replica exists to be elected in its place (its leadership ends only
// with the process, and the caller checks the term it led in).
func (m *Replica) ConfirmLeader(ctx context.Context) error {
	if m.Sole() {
		return nil
	}
	_, err := m.Read(ctx, true, func(*tesserapb.MetaState) (any, error) { return nil, nil })
	return err
}

// withDefaultTimeout gives ctx a deadline when it has none: Dragonboat's
// Sync* calls require one.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, batchTimeout)
}

// State returns a copy of the meta state as this replica has applied it.
func State(ctx context.Context, meta metaRaft, linearizable bool) (*tesserapb.MetaState, error) {
	out, err := meta.Read(ctx, linearizable, func(st *tesserapb.MetaState) (any, error) {
		return proto.CloneOf(st), nil
	})
	if err != nil {
		return nil, err
	}
	return out.(*tesserapb.MetaState), nil
}

// retryable reports whether a meta request failed for a reason that a retry
// after a short pause may cure (an election, a busy replica).
func retryable(err error) bool {
	var nl *NotLeaderError
	return errors.As(err, &nl) || errors.Is(err, ErrNoLeader) ||
		errors.Is(err, dragonboat.ErrShardNotReady) || errors.Is(err, dragonboat.ErrSystemBusy) ||
		errors.Is(err, dragonboat.ErrTimeout) || errors.Is(err, dragonboat.ErrAborted)
}

// withRetries calls fn until it succeeds, fails for good, or ctx ends.
func withRetries(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 0; ; attempt++ {
		if err = fn(); err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(time.Duration(min(attempt+1, 10)) * 20 * time.Millisecond):
		}
	}
}
