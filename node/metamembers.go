package node

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/placement"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// The meta range's membership, kept by the meta leader's placement pass:
// up to metaVoters voters; a voter on a dead node removed once a live
// non-voting replica can take its place (and promoted into it); a node
// whose replica was removed while it was down added again as a non-voter
// under a new replica ID (Dragonboat never takes back a removed one).

// metaReadTimeout bounds a read of the meta range's membership.
const metaReadTimeout = 2 * time.Second

// metaVoters is how many voters the meta range keeps when it can: five
// survive two failures, and more would only slow its writes.
const metaVoters = 5

// metaMembers is the meta range's membership, by replica ID.
type metaMembers struct {
	voters, learners map[uint64]string
	removed          map[uint64]struct{}
	configChangeID   uint64
}

// metaMembership returns the meta range's membership as this node's replica
// knows it (linearizably on the leader).
func (s *Node) metaMembership() (metaMembers, bool) {
	ctx, cancel := s.stopper.WithTimeout(metaReadTimeout)
	defer cancel()
	m, err := s.nh.SyncGetShardMembership(ctx, meta.RangeID)
	if err != nil {
		return metaMembers{}, false
	}
	return membersFrom(m), true
}

func membersFrom(m *dragonboat.Membership) metaMembers {
	return metaMembers{voters: m.Nodes, learners: m.NonVotings, removed: m.Removed, configChangeID: m.ConfigChangeID}
}

// replicaOf finds a node's replica in the membership: its replica ID,
// whether it votes, and whether it is there at all.
func (m metaMembers) replicaOf(node uint64) (replicaID uint64, voter, ok bool) {
	for id := range m.voters {
		if replicaid.NodeOf(id) == node {
			return id, true, true
		}
	}
	for id := range m.learners {
		if replicaid.NodeOf(id) == node {
			return id, false, true
		}
	}
	return 0, false, false
}

// metaChangeKind is what a metaChange does.
type metaChangeKind int

const (
	// metaPromote makes a non-voting replica a voter.
	metaPromote metaChangeKind = iota + 1
	// metaRemoveDead removes a voter whose node is dead.
	metaRemoveDead
	// metaReadd adds a node whose replica was removed again, as a non-voter
	// under a new replica ID, and tells the node to start it.
	metaReadd
	// metaTell tells a node to start the replica it was added again under.
	metaTell
)

// metaChange is one change of the meta range's membership.
type metaChange struct {
	kind      metaChangeKind
	node      uint64
	replicaID uint64
}

// planMetaChange picks the next change of the meta range's membership, at
// most one per pass. running maps each live node to the meta replica it
// reports running; skip holds nodes being removed from the cluster.
func planMetaChange(c *placement.Cluster, m metaMembers, running map[uint64]uint64, skip map[uint64]bool) (metaChange, bool) {
	state := map[uint64]placement.NodeState{}
	for _, n := range c.Nodes {
		state[n.ID] = n.State
	}
	// A live node running a replica that is no longer a member.
	for _, node := range slices.Sorted(maps.Keys(running)) {
		rid := running[node]
		_, voter := m.voters[rid]
		_, learner := m.learners[rid]
		if voter || learner || rid == 0 || skip[node] || state[node] != placement.NodeLive {
			continue
		}
		if id, _, ok := m.replicaOf(node); ok {
			return metaChange{kind: metaTell, node: node, replicaID: id}, true
		}
		return metaChange{kind: metaReadd, node: node, replicaID: replicaid.Next(node, keySet(m.voters), keySet(m.learners), m.removed)}, true
	}
	var liveLearner uint64
	for _, id := range slices.Sorted(maps.Keys(m.learners)) {
		if state[replicaid.NodeOf(id)] == placement.NodeLive {
			liveLearner = id
			break
		}
	}
	if liveLearner == 0 || len(m.voters) == 0 {
		return metaChange{}, false
	}
	if len(m.voters) < metaVoters {
		return metaChange{kind: metaPromote, node: replicaid.NodeOf(liveLearner), replicaID: liveLearner}, true
	}
	live := map[uint64]bool{}
	for node, st := range state {
		live[node] = st == placement.NodeLive || st == placement.NodeDecommissioning
	}
	for _, id := range slices.Sorted(maps.Keys(m.voters)) {
		if state[replicaid.NodeOf(id)] == placement.NodeDead && quorumWithout(m.voters, id, live) {
			return metaChange{kind: metaRemoveDead, node: replicaid.NodeOf(id), replicaID: id}, true
		}
	}
	return metaChange{}, false
}

// changeMeta carries out one change planned by planMetaChange.
func (s *Node) changeMeta(ch metaChange) {
	defer func() {
		s.live.mu.Lock()
		s.live.changingMeta = false
		s.live.mu.Unlock()
	}()
	ctx, cancel := s.stopper.WithTimeout(placementOpTimeout)
	defer cancel()
	m, err := s.nh.SyncGetShardMembership(ctx, meta.RangeID)
	if err != nil {
		return
	}
	// The oracle's lease assumes the voters it heard from stay voters.
	s.allocator.EndLease()
	switch ch.kind {
	case metaPromote:
		addr, ok := m.NonVotings[ch.replicaID]
		if !ok {
			return
		}
		// The meta range stops counting this replica as its only voter
		// first.
		s.meta.NotSole()
		if err := s.nh.SyncRequestAddReplica(ctx, meta.RangeID, ch.replicaID, addr, m.ConfigChangeID); err != nil {
			s.log.Warn("making a meta replica a voter", "node", ch.node, "err", err)
			return
		}
		s.log.Info("meta replica made a voter", "node", ch.node, "replica", ch.replicaID)
	case metaRemoveDead:
		if _, ok := m.Nodes[ch.replicaID]; !ok {
			return
		}
		if err := s.nh.SyncRequestDeleteReplica(ctx, meta.RangeID, ch.replicaID, m.ConfigChangeID); err != nil {
			s.log.Warn("removing a dead node's meta replica", "node", ch.node, "err", err)
			return
		}
		s.log.Info("dead node's meta replica removed", "node", ch.node, "replica", ch.replicaID)
	case metaReadd:
		addr, err := s.directory.RaftAddress(ctx, ch.node)
		if err != nil {
			return
		}
		if err := s.nh.SyncRequestAddNonVoting(ctx, meta.RangeID, ch.replicaID, addr, m.ConfigChangeID); err != nil {
			s.log.Warn("adding a node to the meta range again", "node", ch.node, "err", err)
			return
		}
		s.log.Info("node added to the meta range again", "node", ch.node, "replica", ch.replicaID)
		fallthrough
	case metaTell:
		cc, err := s.directory.Conn(ctx, ch.node)
		if err == nil {
			_, err = tesserapb.NewInternalClient(cc).RestartMeta(ctx, &tesserapb.RestartMetaRequest{ReplicaId: ch.replicaID})
		}
		if err != nil {
			s.log.Warn("telling a node to start its new meta replica", "node", ch.node, "err", err)
		}
	}
}

// RestartMeta serves Internal.RestartMeta.
func (i *internalService) RestartMeta(_ context.Context, req *tesserapb.RestartMetaRequest) (*tesserapb.RestartMetaResponse, error) {
	if err := i.s.restartMeta(req.ReplicaId); err != nil {
		return nil, err
	}
	return &tesserapb.RestartMetaResponse{}, nil
}

// restartMeta replaces this node's meta replica, which the meta range
// removed, by the non-voting replica the meta leader added under id: it
// records the new ID first (a node that stops halfway restarts with it),
// stops the old replica and drops its data, and starts the new one empty.
func (s *Node) restartMeta(id uint64) error {
	s.metaRestartMu.Lock()
	defer s.metaRestartMu.Unlock()
	old := s.meta.ReplicaID()
	if id == old {
		return nil
	}
	if replicaid.NodeOf(id) != s.replicaID || replicaid.Incarnation(id) <= replicaid.Incarnation(old) {
		return status.Errorf(codes.InvalidArgument, "tessera: node %d runs meta replica %#x; %#x is not a later one of its own", s.replicaID, old, id)
	}
	if err := s.recordIdentity(func(rec *identity) { rec.MetaReplicaID, rec.MetaVoter = id, false }); err != nil {
		return status.Errorf(codes.Internal, "tessera: recording the new meta replica: %v", err)
	}
	if err := s.nh.StopShard(meta.RangeID); err != nil && !errors.Is(err, dragonboat.ErrShardNotFound) {
		return status.Errorf(codes.Unavailable, "tessera: stopping the old meta replica: %v", err)
	}
	deadline := time.Now().Add(placementOpTimeout)
	for {
		err := s.nh.RemoveData(meta.RangeID, old)
		if err == nil {
			break
		}
		if !errors.Is(err, dragonboat.ErrShardNotStopped) || time.Now().After(deadline) {
			return status.Errorf(codes.Unavailable, "tessera: dropping the old meta replica: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cfg := s.raftConfig(meta.RangeID, id)
	cfg.IsNonVoting = true
	if err := s.nh.StartReplica(nil, true, meta.StateMachineWithAuth(s.setAuth), cfg); err != nil {
		return status.Errorf(codes.Unavailable, "tessera: starting the new meta replica: %v", err)
	}
	s.meta.Restarted(id)
	s.log.Info("meta replica started again", "old", old, "new", id)
	return nil
}
