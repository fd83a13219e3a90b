package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/raftinfo"
	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// raftConfig is the Raft configuration of every range (and the meta range).
// soloElectionRTT is the election timeout, in heartbeat intervals, of a
// Raft group with a single member (a one-node cluster): it has nobody to
// wait for, and a range a split has just made serves nothing until it has
// elected itself, so it goes as fast as Dragonboat allows (more than two
// heartbeat intervals; randomised up to twice that).
const soloElectionRTT = 3

// soleNode reports whether the cluster is this one node (its membership
// cannot change), so every Raft group here has a single member.
func (s *Node) soleNode() bool { return len(s.raftMembers) == 1 }

func (s *Node) raftConfig(rangeID, replicaID uint64) dbconfig.Config {
	electionRTT := uint64(s.cfg.ElectionTimeout / s.cfg.HeartbeatInterval)
	snapshotEntries, catchUpEntries, _ := s.raftLogSettings()
	if s.soleNode() {
		electionRTT = min(electionRTT, soloElectionRTT)
	}
	return dbconfig.Config{
		ShardID:            rangeID,
		ReplicaID:          replicaID,
		ElectionRTT:        electionRTT,
		HeartbeatRTT:       1,
		CheckQuorum:        true,
		PreVote:            true,
		SnapshotEntries:    snapshotEntries,
		CompactionOverhead: catchUpEntries,
		// On one node (short logs, see raftLogSettings): a compaction
		// request makes Dragonboat's log store (Pebble) flush its memtable
		// and compact the truncated span at every log truncation; without
		// them the truncation's range deletion is dropped by the store's own
		// flushes and compactions, and a log truncated before its memtable
		// fills is never written to a table. Clusters of several members
		// keep Dragonboat's default.
		DisableAutoCompactions: s.soleNode(),
		// An idle range stops heartbeating (Dragonboat's quiesce), so a node
		// with many ranges does not burn CPU while they are idle.
		Quiesce: rangeID != meta.RangeID,
		// A membership change names the membership it changes, so two made
		// at once cannot both apply (replica moves).
		OrderedConfigChange: true,
	}
}

// raftLogSettings returns the ranges' snapshot interval in entries, their
// catch-up entries, and the bytes of entries after which a range's leader
// requests a snapshot (0: never). The flags' values where given (non-zero);
// otherwise etcd's defaults on a cluster of several members, and on a
// one-node cluster a short log: no follower can need catch-up entries
// there, and a snapshot of a range is one fsync of the store (its state
// machine is on disk; Dragonboat snapshots only the metadata). Truncated
// every 2 MiB, a busy range's log stays within one 4 MiB memtable of
// Dragonboat's log store (shared by every range), so it is mostly deleted
// before it is flushed and compacted (docs/performance.md, "Short Raft logs
// on one node"). The trigger is in bytes, not entries, so that small entries
// do not snapshot more often.
func (s *Node) raftLogSettings() (snapshotEntries, catchUpEntries uint64, snapshotBytes int64) {
	snapshotEntries, catchUpEntries = DefaultSnapshotCount, DefaultSnapshotCatchUp
	if s.soleNode() {
		catchUpEntries = DefaultSoleSnapshotCatchUp
		if s.cfg.SnapshotCount == 0 {
			snapshotBytes = DefaultSoleSnapshotBytes
		}
	}
	return cmp.Or(s.cfg.SnapshotCount, snapshotEntries), cmp.Or(s.cfg.SnapshotCatchUpEntries, catchUpEntries), snapshotBytes
}

// startRanges starts the replicas of every data range this node holds: the
// first range of a new cluster on the members that hold it, and on a restart
// every range whose state is in the store (those of splits among them).
func (s *Node) startRanges() error {
	ids, err := s.store.RangeIDs()
	if err != nil {
		return err
	}
	if !slices.Contains(ids, firstRangeID) && s.holdsFirstRange() {
		ids = append([]uint64{firstRangeID}, ids...)
	}
	for _, id := range ids {
		members := s.restartMembers(id)
		if members == nil && !s.nh.HasNodeInfo(id, s.localReplicaID(id)) {
			s.log.Warn("not starting a range whose Raft group never started here", "range", id)
			continue
		}
		err := s.startRange(id, members, false)
		if errors.Is(err, dragonboat.ErrReplicaRemoved) {
			// Removed from the range, and stopped before its data went.
			s.log.Info("dropping the data of a range this node was removed from", "range", id)
			if err := s.store.DropRange(id); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// firstRangeMembers are the members holding the first data range of a new
// cluster: the first --replicas members of --initial-cluster.
func (s *Node) firstRangeMembers() map[uint64]dragonboat.Target {
	n := min(s.cfg.Replicas, len(s.raftMembers))
	out := make(map[uint64]dragonboat.Target, n)
	for id := uint64(1); id <= uint64(n); id++ {
		out[id] = s.raftMembers[id]
	}
	return out
}

// holdsFirstRange reports whether this node is one of firstRangeMembers.
func (s *Node) holdsFirstRange() bool {
	_, ok := s.firstRangeMembers()[s.replicaID]
	return ok
}

// restartMembers is the initial membership to start a range's replica with
// at boot: none when Dragonboat has the replica's own record (a restart),
// else, on a member of the first range, the first range's members — a new
// cluster's first range, or a range a split made whose replica did not start
// before the node stopped (taken to have the first range's members, as every
// range has until replicas move).
func (s *Node) restartMembers(rangeID uint64) map[uint64]dragonboat.Target {
	if s.nh.HasNodeInfo(rangeID, s.localReplicaID(rangeID)) || !s.holdsFirstRange() {
		return nil
	}
	return s.firstRangeMembers()
}

// membership is a Raft group's voting members (node IDs, in order) and the
// log index of the membership change that made them.
type membership struct {
	nodes      []uint64
	confChange uint64
}

// memberships returns the membership of every Raft group this node runs, as
// its replicas know them.
func (s *Node) memberships() map[uint64]membership {
	infos := raftinfo.Shards(s.nh)
	out := make(map[uint64]membership, len(infos))
	for _, si := range infos {
		out[si.ShardID] = membership{nodes: nodesOf(maps.Keys(si.Replicas)), confChange: si.ConfigChangeIndex}
	}
	return out
}

// nodesOf returns the nodes holding the given replicas, in order.
func nodesOf(replicas iter.Seq[uint64]) []uint64 {
	var nodes []uint64
	for id := range replicas {
		nodes = append(nodes, replicaid.NodeOf(id))
	}
	slices.Sort(nodes)
	return slices.Compact(nodes)
}

// localReplicaID is this node's replica ID in a range: its node ID unless
// it holds the range under a later incarnation (internal/replicaid).
func (s *Node) localReplicaID(rangeID uint64) uint64 {
	if rangeID == meta.RangeID {
		if s.meta == nil {
			return s.metaReplicaID()
		}
		return s.meta.ReplicaID()
	}
	if id, ok, err := s.store.ReplicaID(rangeID); err == nil && ok {
		return id
	}
	return s.replicaID
}

// replicaOf returns node's replica ID in a range this node runs, as this
// node's replica knows the range's members.
func (s *Node) replicaOf(rangeID, node uint64) (uint64, bool) {
	for id := range s.membersOf(rangeID) {
		if replicaid.NodeOf(id) == node {
			return id, true
		}
	}
	return 0, false
}

// membersOf returns the voting members of a range this node runs, with
// their Raft addresses (nil when it does not run the range).
func (s *Node) membersOf(rangeID uint64) map[uint64]dragonboat.Target {
	si, ok := raftinfo.Shard(s.nh, rangeID)
	if !ok {
		return nil
	}
	return maps.Clone(si.Replicas)
}

// startRange starts this node's replica of a data range and adds it to the
// router's cache. members are the range's initial members for a replica
// Dragonboat has no record of (nil for a restart). Starting a range twice is
// a no-op.
func (s *Node) startRange(rangeID uint64, members map[uint64]dragonboat.Target, join bool) error {
	s.rangesMu.Lock()
	defer s.rangesMu.Unlock()
	if _, ok := s.ranges[rangeID]; ok {
		return nil
	}
	if join {
		if err := s.store.ExpectSnapshot(rangeID); err != nil {
			return err
		}
	}
	rc := s.raftConfig(rangeID, s.localReplicaID(rangeID))
	// A new member joins as a non-voting replica and is promoted once it
	// has caught up.
	rc.IsNonVoting = join
	if err := s.nh.StartOnDiskReplica(members, join, s.store.CreateStateMachine, rc); err != nil {
		return fmt.Errorf("starting range %d: %w", rangeID, err)
	}
	_, _, snapshotBytes := s.raftLogSettings()
	self := s.localReplicaID(rangeID)
	cfg := shard.Config{RangeID: rangeID, ReplicaID: self, SnapshotEveryBytes: snapshotBytes,
		RequestTimeout: s.cfg.Knobs.RangeRequestTimeout, MaxInFlight: s.cfg.Knobs.RangeMaxInFlight, Logger: s.log, Stopper: s.stopper}
	cfg.RepeatRead = s.cfg.Knobs.RepeatRangeReads
	cfg.SoleVoter = func() (bool, bool) {
		members := s.membersOf(rangeID)
		_, in := members[self]
		return len(members) == 1 && in, len(members) > 0
	}
	if hook := s.cfg.Knobs.AfterRevisionsTaken; hook != nil {
		cfg.AfterRevisionsTaken = func(first int64) { hook(rangeID, first) }
	}
	if rangeID == firstRangeID {
		cfg.ExpireLeases = true
		cfg.RevokeExpired = func(ctx context.Context, id int64) error {
			_, err := s.router.RevokeEverywhere(ctx, id)
			return err
		}
	}
	s.ranges[rangeID] = shard.New(cfg, s.nh, s.store, s.oracle)
	s.refreshCacheLocked()
	return nil
}

// refreshCache gives the router's cache this node's current replicas.
func (s *Node) refreshCache() {
	s.rangesMu.Lock()
	defer s.rangesMu.Unlock()
	s.refreshCacheLocked()
}

func (s *Node) refreshCacheLocked() {
	list := make([]router.Range, 0, len(s.ranges))
	for _, r := range s.ranges {
		list = append(list, r)
	}
	s.cache.Set(list)
}

// onSplit is the store's split callback: it runs in the state machine's apply
// path, so it only starts the child's replica in the background.
func (s *Node) onSplit(parentID, childID uint64) {
	// The child has its parent's voting replicas at the split's place in
	// the parent's log: every one of them applies the split and starts the
	// child with the same members. This runs as the split applies, when
	// the membership Dragonboat reports is the one every membership change
	// before the split made and none after it (they apply in the same
	// order on the same goroutine); read later, a replica promoted or
	// removed right after the split would start the child with members
	// the others do not have.
	s.debug.splits.Inc()
	members := s.membersOf(parentID)
	self := s.localReplicaID(parentID)
	s.goTask(func() {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		default:
		}
		if len(members) == 0 {
			s.log.Error("a split's parent range lists no members here", "parent", parentID, "range", childID)
			return
		}
		if _, member := members[self]; !member {
			// A replica still joining the parent (not a voter yet) applied
			// the split: the child's members do not include it.
			if err := s.store.DropRange(childID); err != nil {
				s.log.Warn("deleting a split's range this node is not a member of", "parent", parentID, "range", childID, "err", err)
			}
			// The child's keys go to its replicas elsewhere once its
			// descriptor is recorded.
			s.cache.Refresh()
			return
		}
		if self != s.replicaID {
			// The child's members are the parent's, replica IDs and all.
			if err := s.store.SetReplicaID(childID, self); err != nil {
				s.log.Error("recording this node's replica ID in a split's range", "range", childID, "err", err)
				return
			}
		}
		if err := s.startRange(childID, members, false); err != nil {
			s.log.Error("starting a range made by a split", "parent", parentID, "range", childID, "err", err)
			return
		}
		if parent := s.rangeByID(parentID); parent != nil && parent.IsLeader() {
			s.goTask(func() { s.electNewRange(childID, members) })
		}
		// Dragonboat opens the child's state machine in the background; the
		// router sees the child's keys once it is open.
		for s.store.Range(childID) == nil {
			select {
			case <-s.stopper.ShouldQuiesce():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		s.cache.Refresh()
		s.log.Info("range split", "parent", parentID, "range", childID)
		// The parent's new bounds can be recorded now; the child's once it
		// has a leader (whose node records it).
		s.recordRangesSoon()
		s.awaitLeader(childID, 10*s.cfg.ElectionTimeout)
		s.recordRangesSoon()
	})
}

// electNewRange gets a range that a split has just made its first leader
// quickly, on the member that leads the fewest ranges (this node on a tie),
// so that splits spread leadership over the members instead of leaving every
// range led where its parent was. It runs on the node that led the parent
// when the split applied; if the chosen member cannot be asked, this node's
// replica campaigns.
func (s *Node) electNewRange(rangeID uint64, members map[uint64]dragonboat.Target) {
	s.picksMu.Lock()
	target := leastLeading(s.leadershipCounts(rangeID, members), s.replicaID)
	s.picks[rangeID] = pick{member: target, at: time.Now()}
	s.picksMu.Unlock()
	if target != s.replicaID {
		ctx, cancel := s.stopper.WithTimeout(s.cfg.ElectionTimeout)
		err := s.askToCampaign(ctx, target, rangeID)
		cancel()
		if err == nil {
			return
		}
		s.log.Debug("asking a member to lead a new range failed; campaigning here", "range", rangeID, "member", target, "err", err)
	}
	s.hastenElection(rangeID, s.majorityStarted)
}

// pick is electNewRange's choice of the member to lead a new range.
type pick struct {
	member uint64
	at     time.Time
}

// pickMemory is how long a pick counts for its member while the range has
// no known leader (its election is under way).
const pickMemory = 5 * time.Second

// leadershipCounts counts, for every given member, the data ranges other
// than skip that it leads as far as this node's replicas know, counting a
// range with no known leader for the member electNewRange picked for it
// lately (so that splits made together do not all pick the same member).
// The caller holds picksMu.
func (s *Node) leadershipCounts(skip uint64, members map[uint64]dragonboat.Target) map[uint64]int {
	led := make(map[uint64]int, len(members))
	for id := range members {
		led[replicaid.NodeOf(id)] = 0
	}
	now := time.Now()
	for _, r := range s.rangeList() {
		id := r.RangeID()
		if id == skip {
			continue
		}
		leader, _, ok := r.Leader()
		member := replicaid.NodeOf(leader)
		if ok {
			delete(s.picks, id)
		} else if p, picked := s.picks[id]; picked && now.Sub(p.at) < pickMemory {
			member, ok = p.member, true
		}
		if _, isMember := led[member]; ok && isMember {
			led[member]++
		}
	}
	for id, p := range s.picks {
		if now.Sub(p.at) >= pickMemory {
			delete(s.picks, id)
		}
	}
	return led
}

// leastLeading returns the member with the lowest count: self if it is
// among them, else the lowest ID.
func leastLeading(led map[uint64]int, self uint64) uint64 {
	best := self
	for id, n := range led {
		if n < led[best] || (n == led[best] && best != self && id < best) {
			best = id
		}
	}
	return best
}

func (s *Node) askToCampaign(ctx context.Context, member, rangeID uint64) error {
	cc, err := s.directory.Conn(ctx, member)
	if err != nil {
		return err
	}
	_, err = tesserapb.NewInternalClient(cc).CampaignRange(ctx, &tesserapb.CampaignRangeRequest{RangeId: rangeID})
	return err
}

// campaignWhenStarted is CampaignRange's background half: it waits (at most
// an election timeout) until this node has started its replica of the
// range, then hastens the range's election.
func (s *Node) campaignWhenStarted(rangeID uint64) {
	deadline := time.Now().Add(s.cfg.ElectionTimeout)
	for s.rangeByID(rangeID) == nil {
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.hastenElection(rangeID, s.majorityStarted)
}

// bootstrapTerm is the term Dragonboat starts a new Raft group at.
const bootstrapTerm = 1

// startedPoll is how often hastenElection looks again for a majority of
// members running a new range.
const startedPoll = 20 * time.Millisecond

// hastenElection makes this node's replica of a range that a split has just
// made stand for election early, instead of after an election timeout
// (randomised between one and two, 1–2 s by default, during which the range
// serves nothing). One replica per split does this: the one electNewRange
// picks. Member 1 of a new cluster also runs it at start for the meta range
// and the first range.
//
// It waits one and a half heartbeat intervals first: Dragonboat times a
// proposal out against the replica's clock, which starts at zero and jumps
// to the node's at the replica's first tick (within one heartbeat interval
// of its start), so a leader elected before that tick would see its first
// proposals time out at once. Then it waits until a majority of the members
// (this one included) run the range, as majorityReady judges (recording the
// members it found ready in its map): a vote request reaching a member that
// has not started it is dropped, and a candidate whose requests were dropped
// waits out its own election timeout (Dragonboat's followers take TimeoutNow,
// its candidates ignore it), so the campaign is made once, when it can win.
// It campaigns only while the replica is still at term 1, where Dragonboat
// starts a new group (the first election is for term 2): a campaign then
// reaches term 2 at most, which cannot depose a leader (a leader's term is
// at least 2, and the votes of term 2 are cast by then), and a replica that
// has heard from any candidate or leader is left alone. It gives up after
// one election timeout; Raft's own timers take over then.
func (s *Node) hastenElection(rangeID uint64, majorityReady func(rangeID uint64, ready map[uint64]bool) bool) {
	t := s.raftNet.Transport()
	if t == nil {
		return
	}
	deadline := time.Now().Add(s.cfg.ElectionTimeout)
	wait := s.cfg.HeartbeatInterval * 3 / 2
	self := s.localReplicaID(rangeID)
	started := map[uint64]bool{self: true}
	for {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-time.After(wait):
		}
		if time.Now().After(deadline) {
			return
		}
		wait = startedPoll
		if majorityReady(rangeID, started) {
			break
		}
	}
	if _, term, known, err := s.nh.GetLeaderID(rangeID); err != nil || known || term > bootstrapTerm {
		return
	}
	t.Campaign(rangeID, self)
}

// majorityListening is hastenElection's test at a new cluster's start, when
// the members' client addresses are not known yet (the node registry lives
// in the meta range): a majority of the members (this one included) accept
// connections on their Raft addresses, which they open just before starting
// their replicas.
func (s *Node) majorityListening(rangeID uint64, ready map[uint64]bool) bool {
	members := s.raftMembers
	if rangeID != meta.RangeID {
		members = s.firstRangeMembers()
	}
	need := len(members)/2 + 1
	for id, addr := range members {
		if len(ready) >= need {
			return true
		}
		if ready[id] {
			continue
		}
		ctx, cancel := s.stopper.WithTimeout(s.cfg.HeartbeatInterval)
		c, err := s.cfg.dialNode(ctx, addr)
		cancel()
		if err == nil {
			_ = c.Close()
			ready[id] = true
		}
	}
	return len(ready) >= need
}

// majorityStarted reports whether a majority of the members run their
// replica of a range, asking the members not yet known to (started, which
// it updates) until there is one.
func (s *Node) majorityStarted(rangeID uint64, started map[uint64]bool) bool {
	members := s.membersOf(rangeID)
	if len(members) == 0 {
		return false // Dragonboat has not listed the range's members yet
	}
	need := len(members)/2 + 1
	for id := range members {
		if len(started) >= need {
			return true
		}
		if started[id] {
			continue
		}
		ctx, cancel := s.stopper.WithTimeout(s.cfg.HeartbeatInterval)
		cc, err := s.directory.Conn(ctx, id)
		if err == nil {
			var resp *tesserapb.RangeStartedResponse
			resp, err = tesserapb.NewInternalClient(cc).RangeStarted(ctx, &tesserapb.RangeStartedRequest{RangeId: rangeID})
			if err == nil && resp.Started {
				started[id] = true
			}
		}
		cancel()
	}
	return len(started) >= need
}

// awaitLeader waits, at most for the given time, until this node's replica
// of a range knows a leader.
func (s *Node) awaitLeader(rangeID uint64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if r := s.rangeByID(rangeID); r != nil {
			if _, _, ok := r.Leader(); ok {
				return
			}
		}
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Node) rangeByID(id uint64) *shard.Replica {
	s.rangesMu.Lock()
	defer s.rangesMu.Unlock()
	return s.ranges[id]
}

// rangeList returns the data range replicas in ID order.
func (s *Node) rangeList() []*shard.Replica {
	s.rangesMu.Lock()
	defer s.rangesMu.Unlock()
	out := make([]*shard.Replica, 0, len(s.ranges))
	for _, r := range s.ranges {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RangeID() < out[j].RangeID() })
	return out
}

// rangeInfo describes one replica as `tessera ctl ranges` shows it.
func (s *Node) rangeInfo(r *shard.Replica) *tesserapb.RangeInfo {
	info := &tesserapb.RangeInfo{RangeId: r.RangeID(), ReplicaNodeIds: nodesOf(maps.Keys(s.membersOf(r.RangeID())))}
	if leader, _, ok := r.Leader(); ok {
		info.LeaderNodeId = replicaid.NodeOf(leader)
	}
	info.Qps = r.QPS()
	if rsm := s.store.Range(r.RangeID()); rsm != nil {
		info.StartKey, info.EndKey, info.Generation = rsm.VersionedBounds()
		info.SizeBytes = rsm.SizeBytes()
	}
	return info
}

// internalService is the node's tesserapb.Internal: the oracle's
// GetRevisions (meta.InternalServer), range writes from the router, and the admin
// calls here.
type internalService struct {
	*meta.InternalServer
	s *Node
}

func (i *internalService) RangeWriteStream(stream tesserapb.Internal_RangeWriteStreamServer) error {
	return i.s.router.RangeWriteStream(stream)
}

func (i *internalService) FenceRange(ctx context.Context, req *tesserapb.FenceRangeRequest) (*tesserapb.FenceRangeResponse, error) {
	return i.s.router.FenceRange(ctx, req)
}

func (i *internalService) ListRanges(context.Context, *tesserapb.ListRangesRequest) (*tesserapb.ListRangesResponse, error) {
	resp := &tesserapb.ListRangesResponse{}
	for _, r := range i.s.rangeList() {
		resp.Ranges = append(resp.Ranges, i.s.rangeInfo(r))
	}
	// The ranges held elsewhere as the router routes to them (their
	// leaders, sizes and loads are known where they are held).
	i.s.cache.Refresh()
	for _, d := range i.s.routingDescriptors() {
		if i.s.cache.Remote(d.RangeId) != nil {
			resp.Ranges = append(resp.Ranges, &tesserapb.RangeInfo{RangeId: d.RangeId, StartKey: d.StartKey, EndKey: d.EndKey,
				ReplicaNodeIds: d.ReplicaNodeIds, Generation: d.Generation})
		}
	}
	sort.Slice(resp.Ranges, func(a, b int) bool { return bytes.Compare(resp.Ranges[a].StartKey, resp.Ranges[b].StartKey) < 0 })
	return resp, nil
}

// RangeStarted reports whether this node runs its replica of a range.
func (i *internalService) RangeStarted(_ context.Context, req *tesserapb.RangeStartedRequest) (*tesserapb.RangeStartedResponse, error) {
	resp := &tesserapb.RangeStartedResponse{Started: i.s.rangeByID(req.RangeId) != nil}
	if rsm := i.s.store.Range(req.RangeId); rsm != nil {
		resp.AppliedIndex, resp.Open = rsm.AppliedIndex(), true
	}
	resp.Unusable = i.s.store.FedLogBeforeSnapshot(req.RangeId)
	return resp, nil
}

// CampaignRange makes this node's replica of a range a split has just made
// stand for election early (see electNewRange).
func (i *internalService) CampaignRange(_ context.Context, req *tesserapb.CampaignRangeRequest) (*tesserapb.CampaignRangeResponse, error) {
	if req.RangeId == 0 || req.RangeId == meta.RangeID {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: range %d is not a data range", req.RangeId)
	}
	i.s.goTask(func() { i.s.campaignWhenStarted(req.RangeId) })
	return &tesserapb.CampaignRangeResponse{}, nil
}

// SplitRange splits the range holding split_key at split_key.
func (i *internalService) SplitRange(ctx context.Context, req *tesserapb.SplitRangeRequest) (*tesserapb.SplitRangeResponse, error) {
	s := i.s
	if len(req.SplitKey) == 0 {
		return nil, status.Error(codes.InvalidArgument, "tessera: split key must not be empty (the keyspace starts there)")
	}
	if rangeID, local, err := s.router.RangeFor(req.SplitKey); err != nil {
		return nil, router.ToGRPC(err)
	} else if !local {
		// Split where the range is held.
		var resp *tesserapb.SplitRangeResponse
		err := s.router.OnReplica(ctx, rangeID, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			resp, err = tesserapb.NewInternalClient(cc).SplitRange(ctx, req)
			return err
		})
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		return resp, nil
	}
	var childID uint64
	for attempt := 0; ; attempt++ {
		parent, err := s.currentRangeFor(ctx, req.SplitKey)
		if err != nil {
			s.log.Warn("split: finding the range", "key", string(req.SplitKey), "err", err)
			return nil, router.ToGRPC(err)
		}
		if start, _, _ := parent.Bounds(); bytes.Equal(start, req.SplitKey) {
			if childID != 0 && parent.RangeID() == childID {
				// An earlier attempt whose answer was lost did split here.
				return &tesserapb.SplitRangeResponse{Right: s.rangeInfo(parent)}, nil
			}
			return nil, status.Errorf(codes.FailedPrecondition, "tessera: %q is already a range boundary (the start of range %d)", req.SplitKey, parent.RangeID())
		}
		if childID == 0 {
			if childID, err = s.meta.AllocateRangeID(ctx); err != nil {
				return nil, status.Errorf(codes.Unavailable, "tessera: allocating a range ID: %v", err)
			}
		}
		cmd := &tesserapb.Command{Op: &tesserapb.Command_Split{Split: &tesserapb.SplitCommand{SplitKey: req.SplitKey, NewRangeId: childID}}}
		_, err = s.router.ProposeTo(ctx, parent, cmd)
		if (errors.Is(err, statemachine.ErrInvalidSplit) || errors.Is(err, shard.ErrTimeout)) && attempt < 5 {
			// Another split moved the bounds since this replica looked, or
			// the outcome is unknown: look again (a split that did happen
			// shows as the key starting the new range).
			continue
		}
		if err != nil {
			s.log.Warn("split: proposing", "range", parent.RangeID(), "key", string(req.SplitKey), "err", err)
			return nil, router.ToGRPC(err)
		}
		// Catch this replica of the parent up past the split (a ReadIndex on
		// the parent: the child may have no leader yet); the child then
		// starts here.
		if _, err := parent.Read(ctx, true, func(*statemachine.View) (any, error) { return nil, nil }); err != nil {
			s.log.Warn("split: catching up", "range", parent.RangeID(), "err", err)
			return nil, router.ToGRPC(err)
		}
		child := s.waitRange(ctx, childID)
		resp := &tesserapb.SplitRangeResponse{Left: s.rangeInfo(parent)}
		if child != nil {
			resp.Right = s.rangeInfo(child)
		}
		return resp, nil
	}
}

// currentRangeFor returns this node's replica of the range holding key, with
// bounds caught up to everything committed (a linearizable read on it first,
// repeated when the bounds moved meanwhile).
func (s *Node) currentRangeFor(ctx context.Context, key []byte) (*shard.Replica, error) {
	for {
		var found *shard.Replica
		for _, r := range s.rangeList() {
			start, end, open := r.Bounds()
			if open && bytes.Compare(key, start) >= 0 && (end == nil || bytes.Compare(key, end) < 0) {
				found = r
			}
		}
		if found == nil {
			// A split handed the key to a range not started here yet.
			select {
			case <-ctx.Done():
				return nil, router.ErrNoRange
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		gen := found.Generation()
		if _, err := found.Read(ctx, true, func(*statemachine.View) (any, error) { return nil, nil }); err != nil {
			return nil, err
		}
		if found.Generation() == gen {
			return found, nil
		}
	}
}

// waitRange waits for this node's replica of a range to be running, its
// state machine open.
func (s *Node) waitRange(ctx context.Context, rangeID uint64) *shard.Replica {
	for {
		if r := s.rangeByID(rangeID); r != nil {
			if _, _, open := r.Bounds(); open {
				return r
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}
