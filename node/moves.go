package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// Replica moves. A range's leader changes its replicas with Dragonboat's
// membership changes, one at a time and never below the range's voter
// count: a new replica is added as a non-voting member, started empty on
// its node, caught up by a snapshot of the range (the leader compacts the
// range's log first, so the new replica cannot be fed the log from its
// start without the state the range began with), and promoted to a voter;
// only then is an old replica removed, and its node told to stop it and
// delete its data. A node that held the range before joins under a new
// replica ID (internal/replicaid): Dragonboat never re-adds a removed one.

const (
	// catchUpPoll is how often the leader asks a new replica how far it has
	// applied.
	catchUpPoll = 50 * time.Millisecond
	// catchUpWake is how often the leader proposes a barrier while a new
	// replica catches up, so that an idle range does not quiesce.
	catchUpWake = 250 * time.Millisecond
	// leaderHandOff bounds the wait for a range's leadership to move before
	// the leader's own replica is removed.
	leaderHandOff = 5 * time.Second
	// recordMoveAttempts and recordMoveTimeout bound the recording of a
	// range's descriptor after a move (recordMove).
	recordMoveAttempts = 3
	recordMoveTimeout  = 2 * time.Second
)

// ChangeReplicas serves Internal.ChangeReplicas: on the range's leader it
// adds, then removes; elsewhere it passes the request to the leader.
func (i *internalService) ChangeReplicas(ctx context.Context, req *tesserapb.ChangeReplicasRequest) (*tesserapb.ChangeReplicasResponse, error) {
	s := i.s
	learner := req.RemoveLearnerId != 0
	if req.RangeId == 0 || (!learner && req.AddNodeId == req.RemoveNodeId) || (learner && (req.AddNodeId != 0 || req.RemoveNodeId != 0)) {
		return nil, status.Error(codes.InvalidArgument, "tessera: a replica change names a range and one node to add or remove (or one of each), or alone a non-voting replica to remove")
	}
	rng := s.rangeByID(req.RangeId)
	if rng == nil || !rng.IsLeader() {
		return s.changeReplicasElsewhere(ctx, req)
	}
	if learner {
		if err := s.removeLearner(ctx, req.RangeId, req.RemoveLearnerId); err != nil {
			return nil, err
		}
		return &tesserapb.ChangeReplicasResponse{}, nil
	}
	if req.AddNodeId != 0 {
		if err := s.addReplica(ctx, req.RangeId, req.AddNodeId); err != nil {
			return nil, err
		}
		s.debug.replicaChanges.WithLabelValues("add").Inc()
	}
	if req.RemoveNodeId != 0 {
		if req.RemoveNodeId == s.replicaID {
			// The leader's own replica goes: hand the leadership over first,
			// and let the new leader remove it.
			if err := s.handOffLeadership(ctx, req.RangeId, req.RemoveNodeId); err != nil {
				return nil, err
			}
			return s.changeReplicasElsewhere(ctx, &tesserapb.ChangeReplicasRequest{RangeId: req.RangeId, RemoveNodeId: req.RemoveNodeId})
		}
		if err := s.removeReplica(ctx, req.RangeId, req.RemoveNodeId); err != nil {
			return nil, err
		}
		s.debug.replicaChanges.WithLabelValues("remove").Inc()
	}
	s.recordRangesSoon()
	m, err := s.membershipAfterChange(ctx, req.RangeId)
	if err != nil {
		return nil, err
	}
	d := &tesserapb.RangeDescriptor{RangeId: req.RangeId, ReplicaNodeIds: nodesOf(maps.Keys(m.Nodes)), ConfVersion: m.ConfigChangeID}
	if rsm := s.store.Range(req.RangeId); rsm != nil {
		d.StartKey, d.EndKey, d.Generation = rsm.VersionedBounds()
		// Recorded at once, so that routing and placement see the move.
		s.recordMove(ctx, d)
		s.cache.Refresh()
	}
	return &tesserapb.ChangeReplicasResponse{Range: d}, nil
}

// recordMove records a range's descriptor after a membership change, in a
// few short attempts: a meta proposal lost to a change of the meta range's
// leadership is never answered, and would hold the move until its
// deadline. A record that fails here is made by the range's replicas, which
// record their range every few seconds.
func (s *Node) recordMove(ctx context.Context, d *tesserapb.RangeDescriptor) {
	err := inShortAttempts(ctx, func(ctx context.Context) error {
		_, err := meta.RecordRanges(ctx, s.meta, []*tesserapb.RangeDescriptor{d})
		return err
	})
	if err != nil {
		s.log.Debug("recording a range's new replicas", "range", d.RangeId, "err", err)
	}
}

// membershipAfterChange reads a range's membership after this node changed
// it, in a few short attempts: the change may have removed the replica
// that led the range meanwhile (its leadership moved during the change),
// and a read it was sent is never answered, which held the move until its
// deadline.
func (s *Node) membershipAfterChange(ctx context.Context, rangeID uint64) (*dragonboat.Membership, error) {
	var m *dragonboat.Membership
	err := inShortAttempts(ctx, func(ctx context.Context) (err error) {
		m, err = s.nh.SyncGetShardMembership(ctx, rangeID)
		return err
	})
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	return m, nil
}

// inShortAttempts runs fn up to recordMoveAttempts times, each bounded by
// recordMoveTimeout, until it succeeds or ctx ends: a Raft request lost
// to a change of its group's leadership is never answered.
func inShortAttempts(ctx context.Context, fn func(context.Context) error) error {
	var err error
	for range recordMoveAttempts {
		actx, cancel := context.WithTimeout(ctx, recordMoveTimeout)
		err = fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	return err
}

// changeReplicasElsewhere passes a replica change to the range's leader: the
// one this node's replica knows, or through a node holding the range.
func (s *Node) changeReplicasElsewhere(ctx context.Context, req *tesserapb.ChangeReplicasRequest) (*tesserapb.ChangeReplicasResponse, error) {
	var resp *tesserapb.ChangeReplicasResponse
	call := func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = tesserapb.NewInternalClient(cc).ChangeReplicas(ctx, req)
		return err
	}
	var err error
	if rng := s.rangeByID(req.RangeId); rng != nil {
		leader, _, ok := rng.Leader()
		if !ok || replicaid.NodeOf(leader) == s.replicaID || !router.MayForward(ctx) {
			if !ok {
				// A quiesced replica that lost its leader counts no
				// election ticks until something wakes it.
				rng.Wake()
			}
			return nil, status.Errorf(codes.Unavailable, "tessera: range %d has no leader to change its replicas; retry", req.RangeId)
		}
		var cc *grpc.ClientConn
		if cc, err = s.directory.Conn(ctx, leader); err == nil {
			err = call(router.ForwardedContext(ctx), cc)
		}
		if status.Code(err) == codes.Unavailable {
			// The leader's node is down: an idle range here may have
			// quiesced, and would never elect another leader unwoken.
			rng.Wake()
		}
	} else {
		err = s.router.OnReplica(ctx, req.RangeId, call)
	}
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	return resp, nil
}

// addReplica gives node a voting replica of the range this node leads.
func (s *Node) addReplica(ctx context.Context, rangeID, node uint64) error {
	m, err := s.nh.SyncGetShardMembership(ctx, rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	if _, ok := findReplica(m.Nodes, node); ok {
		return nil // already a voter
	}
	addr, err := s.directory.RaftAddress(ctx, node)
	if err != nil {
		return router.ToGRPC(err)
	}
	// From now on the range may have another voter: reads here take
	// ReadIndex rounds.
	if rng := s.rangeByID(rangeID); rng != nil {
		rng.NotSole()
	}
	rid, learning := findReplica(m.NonVotings, node)
	if !learning {
		if err := s.compactForNewReplica(ctx, rangeID); err != nil {
			return err
		}
		if m, err = s.nh.SyncGetShardMembership(ctx, rangeID); err != nil {
			return router.ToGRPC(err)
		}
		rid = replicaid.Next(node, keySet(m.Nodes), keySet(m.NonVotings), m.Removed)
		if err := s.nh.SyncRequestAddNonVoting(ctx, rangeID, rid, addr, m.ConfigChangeID); err != nil {
			return status.Errorf(codes.Unavailable, "tessera: adding node %d to range %d as a non-voting replica: %v", node, rangeID, err)
		}
	}
	if err := s.catchUpAndPromote(ctx, rangeID, rid, addr); err != nil {
		// A replica that cannot join stays out of the way: it is removed
		// (its node joins under a new replica ID next time).
		rmCtx, cancel := s.stopper.WithTimeout(leaderHandOff)
		defer cancel()
		if rerr := s.removeLearner(rmCtx, rangeID, rid); rerr != nil {
			// This leader could not (it lost its quorum, or its
			// leadership): whoever leads the range is asked later.
			s.learners.abandon(rangeID, rid)
		}
		return err
	}
	s.log.Info("replica added", "range", rangeID, "node", node, "replica", rid)
	return nil
}

// removeLearner removes a non-voting replica from the range this node leads
// while it is one (a replica promoted, or gone already, is left alone), and
// tells its node to drop it.
func (s *Node) removeLearner(ctx context.Context, rangeID, rid uint64) error {
	m, err := s.nh.SyncGetShardMembership(ctx, rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	if _, learner := m.NonVotings[rid]; !learner {
		return nil
	}
	if err := s.nh.SyncRequestDeleteReplica(ctx, rangeID, rid, m.ConfigChangeID); err != nil {
		return status.Errorf(codes.Unavailable, "tessera: removing the non-voting replica %#x of range %d: %v", rid, rangeID, err)
	}
	s.log.Info("non-voting replica removed", "range", rangeID, "replica", rid)
	s.tellRemoved(ctx, rangeID, replicaid.NodeOf(rid))
	return nil
}

// abandonedLearners are non-voting replicas that additions which failed
// could not remove at once, by replica ID, with their ranges: each is asked
// of the range's leader again until it is gone (removeAbandonedLearners).
// Nothing else removes them: the range's descriptor lists its voters, and
// the replica's node keeps a replica still joining its range.
type abandonedLearners struct {
	mu        sync.Mutex
	byReplica map[uint64]uint64 // replica ID → range ID; guarded by mu
}

func (a *abandonedLearners) abandon(rangeID, rid uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byReplica == nil {
		a.byReplica = map[uint64]uint64{}
	}
	a.byReplica[rid] = rangeID
}

// removeAbandonedLearners asks the leaders of the ranges of abandoned
// non-voting replicas to remove them.
func (s *Node) removeAbandonedLearners() {
	s.learners.mu.Lock()
	pending := maps.Clone(s.learners.byReplica)
	s.learners.mu.Unlock()
	for rid, rangeID := range pending {
		ctx, cancel := s.stopper.WithTimeout(leaderHandOff)
		_, err := s.Internal().ChangeReplicas(ctx, &tesserapb.ChangeReplicasRequest{RangeId: rangeID, RemoveLearnerId: rid})
		cancel()
		if err != nil {
			s.log.Debug("removing a non-voting replica a failed addition left", "range", rangeID, "replica", rid, "err", err)
			continue
		}
		s.learners.mu.Lock()
		delete(s.learners.byReplica, rid)
		s.learners.mu.Unlock()
	}
}

// findReplica returns node's replica ID among a membership's replicas.
func findReplica[V any](replicas map[uint64]V, node uint64) (uint64, bool) {
	for id := range replicas {
		if replicaid.NodeOf(id) == node {
			return id, true
		}
	}
	return 0, false
}

// keySet is a map's key set.
func keySet[V any](m map[uint64]V) map[uint64]struct{} {
	out := make(map[uint64]struct{}, len(m))
	for id := range m {
		out[id] = struct{}{}
	}
	return out
}

// catchUpAndPromote starts a new non-voting replica of the range on its
// node, waits until it has caught up, and makes it a voter.
func (s *Node) catchUpAndPromote(ctx context.Context, rangeID, rid uint64, addr string) error {
	node := replicaid.NodeOf(rid)
	cc, err := s.directory.Conn(ctx, node)
	if err != nil {
		return status.Errorf(codes.Unavailable, "tessera: reaching node %d: %v", node, err)
	}
	client := tesserapb.NewInternalClient(cc)
	if _, err := client.StartReplica(ctx, &tesserapb.StartReplicaRequest{RangeId: rangeID, ReplicaId: rid}); err != nil {
		return err
	}
	// Caught up: the new replica has recovered the range's snapshot and
	// applied what this leader had applied when it started.
	rsm := s.store.Range(rangeID)
	if rsm == nil {
		return status.Errorf(codes.Unavailable, "tessera: range %d is not open here", rangeID)
	}
	want := rsm.AppliedIndex()
	wake := time.Now()
	for {
		resp, err := client.RangeStarted(ctx, &tesserapb.RangeStartedRequest{RangeId: rangeID})
		if err == nil && resp.Unusable {
			return status.Errorf(codes.Aborted, "tessera: node %d's new replica of range %d was sent the range's log instead of its snapshot (its leadership moved); it is removed, and the move may be tried again", node, rangeID)
		}
		if err == nil && resp.Open && resp.AppliedIndex >= want {
			break
		}
		if time.Since(wake) > catchUpWake {
			// An idle range quiesces, and a quiesced leader sends its new
			// member nothing: a barrier wakes it.
			wake = time.Now()
			if rng := s.rangeByID(rangeID); rng != nil {
				_, _ = s.router.ProposeTo(ctx, rng, newBarrier())
			}
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.DeadlineExceeded, "tessera: node %d did not catch up with range %d in time", node, rangeID)
		case <-time.After(catchUpPoll):
		}
	}
	m, err := s.nh.SyncGetShardMembership(ctx, rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	if err := s.nh.SyncRequestAddReplica(ctx, rangeID, rid, addr, m.ConfigChangeID); err != nil {
		return status.Errorf(codes.Unavailable, "tessera: promoting node %d's replica of range %d: %v", node, rangeID, err)
	}
	return nil
}

// compactForNewReplica snapshots the range and compacts its Raft log up to
// the snapshot, waiting until the log no longer starts at its first entry:
// a replica added now is then caught up from a snapshot. A barrier goes
// first: Dragonboat hands a new member a range's snapshot only when the
// state machine has applied an entry of its own since it opened (a range
// that has applied only Raft's own entries would be fed its log instead).
func (s *Node) compactForNewReplica(ctx context.Context, rangeID uint64) error {
	rng := s.rangeByID(rangeID)
	if rng == nil {
		return status.Errorf(codes.Unavailable, "tessera: range %d is not here", rangeID)
	}
	if _, err := s.router.ProposeTo(ctx, rng, newBarrier()); err != nil {
		return router.ToGRPC(err)
	}
	reader, err := s.nh.GetLogReader(rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	opt := dragonboat.SnapshotOption{OverrideCompactionOverhead: true, CompactionOverhead: 0}
	for {
		if _, err := s.nh.SyncRequestSnapshot(ctx, rangeID, opt); err != nil && !errors.Is(err, dragonboat.ErrRejected) {
			return status.Errorf(codes.Unavailable, "tessera: snapshotting range %d: %v", rangeID, err)
		}
		if first, _ := reader.GetRange(); first > 1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.DeadlineExceeded, "tessera: range %d's log was not compacted in time", rangeID)
		case <-time.After(catchUpPoll):
		}
	}
}

// newBarrier is a command that changes nothing.
func newBarrier() *tesserapb.Command {
	return &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{}}}
}

// removeReplica removes node's replica from the range this node leads, then
// tells node to stop it and delete its data (a node that cannot be told now
// does it when it next looks; see dropStaleReplicas).
func (s *Node) removeReplica(ctx context.Context, rangeID, node uint64) error {
	m, err := s.nh.SyncGetShardMembership(ctx, rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	rid, voter := findReplica(m.Nodes, node)
	if !voter {
		rid, _ = findReplica(m.NonVotings, node)
	}
	if rid != 0 {
		if voter && len(m.Nodes) == 1 {
			return status.Errorf(codes.FailedPrecondition, "tessera: node %d holds the only replica of range %d", node, rangeID)
		}
		if err := s.nh.SyncRequestDeleteReplica(ctx, rangeID, rid, m.ConfigChangeID); err != nil {
			return status.Errorf(codes.Unavailable, "tessera: removing node %d from range %d: %v", node, rangeID, err)
		}
		s.log.Info("replica removed", "range", rangeID, "node", node)
	}
	s.tellRemoved(ctx, rangeID, node)
	return nil
}

// tellRemoved asks a node to stop its replica of a range it was removed
// from and delete its data (a node that cannot be told now does it when it
// next looks; see dropStaleReplicas).
func (s *Node) tellRemoved(ctx context.Context, rangeID, node uint64) {
	if cc, err := s.directory.Conn(ctx, node); err == nil {
		if _, err := tesserapb.NewInternalClient(cc).RemoveReplica(ctx, &tesserapb.RemoveReplicaRequest{RangeId: rangeID}); err != nil {
			s.log.Debug("telling a node to drop its removed replica", "range", rangeID, "node", node, "err", err)
		}
	}
}

// handOffLeadership moves the range's leadership from this node to another
// of its voters than except, and waits until this node no longer leads.
func (s *Node) handOffLeadership(ctx context.Context, rangeID, except uint64) error {
	m, err := s.nh.SyncGetShardMembership(ctx, rangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	var to uint64
	for _, id := range slices.Sorted(maps.Keys(m.Nodes)) {
		if n := replicaid.NodeOf(id); n != except && n != s.replicaID {
			to = id
			break
		}
	}
	if to == 0 {
		return status.Errorf(codes.FailedPrecondition, "tessera: range %d has no other voter to lead it", rangeID)
	}
	if err := s.nh.RequestLeaderTransfer(rangeID, to); err != nil {
		return status.Errorf(codes.Unavailable, "tessera: moving range %d's leadership: %v", rangeID, err)
	}
	deadline := time.Now().Add(leaderHandOff)
	for time.Now().Before(deadline) {
		if leader, _, ok := s.rangeByID(rangeID).Leader(); ok && replicaid.NodeOf(leader) != s.replicaID {
			return nil
		}
		select {
		case <-ctx.Done():
			return router.ToGRPC(ctx.Err())
		case <-time.After(catchUpPoll):
		}
	}
	return status.Errorf(codes.Unavailable, "tessera: range %d's leadership did not move; retry", rangeID)
}

// StartReplica serves Internal.StartReplica: this node starts its new,
// empty replica of a range, to be caught up by a snapshot.
func (i *internalService) StartReplica(ctx context.Context, req *tesserapb.StartReplicaRequest) (*tesserapb.StartReplicaResponse, error) {
	s := i.s
	if req.ReplicaId == 0 || replicaid.NodeOf(req.ReplicaId) != s.replicaID {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: replica %#x is not this node's (node %d)", req.ReplicaId, s.replicaID)
	}
	if s.rangeByID(req.RangeId) != nil {
		if s.localReplicaID(req.RangeId) == req.ReplicaId {
			return &tesserapb.StartReplicaResponse{}, nil
		}
		// An earlier replica of the range, removed while this node could
		// not be told: it goes first.
		if err := s.dropReplica(ctx, req.RangeId); err != nil {
			return nil, router.ToGRPC(err)
		}
	}
	if req.ReplicaId != s.replicaID {
		if err := s.store.SetReplicaID(req.RangeId, req.ReplicaId); err != nil {
			return nil, status.Errorf(codes.Internal, "tessera: recording replica %#x of range %d: %v", req.ReplicaId, req.RangeId, err)
		}
	}
	if err := s.startRange(req.RangeId, nil, true); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: starting a replica of range %d: %v", req.RangeId, err)
	}
	s.log.Info("replica started to join its range", "range", req.RangeId)
	return &tesserapb.StartReplicaResponse{}, nil
}

// RemoveReplica serves Internal.RemoveReplica: this node stops its replica
// of a range it was removed from and deletes the replica's data.
func (i *internalService) RemoveReplica(ctx context.Context, req *tesserapb.RemoveReplicaRequest) (*tesserapb.RemoveReplicaResponse, error) {
	if err := i.s.dropReplica(ctx, req.RangeId); err != nil {
		return nil, router.ToGRPC(err)
	}
	return &tesserapb.RemoveReplicaResponse{}, nil
}

// dropReplica stops this node's replica of a range and deletes its Raft log
// and its data. The range's leader asks once it has removed the replica (a
// removed replica may never hear of its removal).
func (s *Node) dropReplica(ctx context.Context, rangeID uint64) error {
	rng := s.rangeByID(rangeID)
	if rng == nil {
		return nil
	}
	s.rangesMu.Lock()
	delete(s.ranges, rangeID)
	s.rangesMu.Unlock()
	s.refreshCache()
	rng.Stop()
	self := s.localReplicaID(rangeID)
	if err := s.nh.StopReplica(rangeID, self); err != nil && !errors.Is(err, dragonboat.ErrShardNotFound) {
		return fmt.Errorf("stopping range %d: %w", rangeID, err)
	}
	for s.store.Running(rangeID) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := s.nh.SyncRemoveData(ctx, rangeID, self); err != nil {
		s.log.Warn("removing a dropped replica's Raft data", "range", rangeID, "err", err)
	}
	if err := s.store.DropRange(rangeID); err != nil {
		return fmt.Errorf("deleting range %d's data: %w", rangeID, err)
	}
	s.log.Info("replica removed from this node", "range", rangeID)
	return nil
}

// dropStaleReplicas drops this node's replicas of ranges the meta range
// records, after a membership change this replica has not applied, without
// this node: it was removed while it could not be told (down, or cut off).
// A replica still joining its range is not in the record yet and is kept.
func (s *Node) dropStaleReplicas(descs []*tesserapb.RangeDescriptor) {
	ctx, cancel := s.stopper.WithTimeout(descriptorSyncInterval)
	defer cancel()
	memberships := s.memberships()
	for _, d := range descs {
		r := s.rangeByID(d.RangeId)
		if r == nil || r.Joining() || slices.Contains(d.ReplicaNodeIds, s.replicaID) {
			continue
		}
		if m, ok := memberships[d.RangeId]; ok && d.ConfVersion <= m.confChange {
			continue // this replica knows at least as much as the record
		}
		s.log.Info("dropping a replica this node was removed from", "range", d.RangeId, "replicas", d.ReplicaNodeIds)
		if err := s.dropReplica(ctx, d.RangeId); err != nil {
			s.log.Warn("dropping a removed replica", "range", d.RangeId, "err", err)
		}
	}
}
