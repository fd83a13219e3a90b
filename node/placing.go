package node

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/placement"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// Placement as it runs. Every node sends the meta range's leader a
// heartbeat (its disk use and its replicas' load) every second; the meta
// leader keeps them in memory (liveness), and every few seconds builds the
// cluster's state — the recorded range descriptors, the registered nodes
// and how long since each was heard from — and runs the schedulers
// (placement.Schedule) on it, carrying out what they propose: replica moves
// through the range leaders (Internal.ChangeReplicas), leadership transfers
// through a node holding the range. A new meta leader waits a few
// heartbeats before it schedules, so that it knows which nodes are alive.

const (
	// defaultNodeHeartbeatInterval is how often a node heartbeats.
	defaultNodeHeartbeatInterval = time.Second
	// defaultPlacementInterval is how often the meta leader schedules.
	defaultPlacementInterval = 2 * time.Second
	// suspectAfterBeats: a node unheard for this many heartbeat intervals
	// is suspect (it takes nothing new).
	suspectAfterBeats = 3
	// placementOpTimeout bounds one operation (a move's snapshot among it).
	placementOpTimeout = 2 * time.Minute
)

// liveness is the meta leader's memory of the nodes' heartbeats, for the
// meta leadership term it was gathered in.
type liveness struct {
	mu    sync.Mutex
	term  uint64    // guarded by mu
	since time.Time // when this node was first seen leading in term; guarded by mu
	beats map[uint64]heartbeat
	// placing holds the operations under way, by range. Guarded by mu.
	placing map[uint64]placement.Op
	// changingMeta: a change of the meta range's membership is under way
	// (changeMeta). Guarded by mu.
	changingMeta bool
	// removing holds the nodes RemoveNode is taking out of the cluster,
	// whose meta replicas are not added again. Guarded by mu.
	removing map[uint64]bool
}

type heartbeat struct {
	at  time.Time
	req *tesserapb.NodeHeartbeatRequest
}

// metaTerm returns whether this node leads the meta range, and in which term.
func (s *Node) metaTerm() (bool, uint64) {
	leader, term, ok := s.meta.Leader()
	return ok && leader == s.replicaID, term
}

// termLocked starts a new table when the meta leadership term changed.
func (l *liveness) termLocked(term uint64) {
	if l.term != term || l.beats == nil {
		l.term, l.since, l.beats = term, time.Now(), map[uint64]heartbeat{}
	}
}

// view returns a copy of the heartbeats heard in term and when this node
// began listening in it.
func (l *liveness) view(term uint64) (map[uint64]heartbeat, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.termLocked(term)
	return maps.Clone(l.beats), l.since
}

func (l *liveness) record(term uint64, req *tesserapb.NodeHeartbeatRequest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.termLocked(term)
	l.beats[req.NodeId] = heartbeat{at: time.Now(), req: req}
}

// NodeHeartbeat serves Internal.NodeHeartbeat on the meta leader; other
// nodes pass it there.
func (i *internalService) NodeHeartbeat(ctx context.Context, req *tesserapb.NodeHeartbeatRequest) (*tesserapb.NodeHeartbeatResponse, error) {
	return onMetaLeader(ctx, i.s, func() (*tesserapb.NodeHeartbeatResponse, error) {
		leads, term := i.s.metaTerm()
		if !leads {
			return nil, status.Error(codes.FailedPrecondition, "tessera: this node does not lead the meta range")
		}
		i.s.live.record(term, req)
		return &tesserapb.NodeHeartbeatResponse{}, nil
	}, func(ctx context.Context, c tesserapb.InternalClient) (*tesserapb.NodeHeartbeatResponse, error) {
		return c.NodeHeartbeat(ctx, req)
	})
}

// anotherNode returns a registered node other than this one, a different
// one each call (0 for none).
func (s *Node) anotherNode(ctx context.Context) uint64 {
	nodes, err := s.directory.Nodes(ctx)
	if err != nil {
		return 0
	}
	var others []uint64
	for _, n := range nodes {
		if n.NodeId != s.replicaID {
			others = append(others, n.NodeId)
		}
	}
	if len(others) == 0 {
		return 0
	}
	return others[s.beatsSent.Add(1)%uint64(len(others))]
}

// suspectAfter is how long a node may go unheard before it is suspect.
func (s *Node) suspectAfter() time.Duration { return suspectAfterBeats * s.heartbeatInterval() }

func (s *Node) heartbeatInterval() time.Duration {
	return knobOr(s.cfg.Knobs.NodeHeartbeatInterval, defaultNodeHeartbeatInterval)
}

// startHeartbeats sends this node's heartbeat to the meta leader every
// heartbeat interval.
func (s *Node) startHeartbeats() {
	_ = s.stopper.Every(s.heartbeatInterval(), func(time.Time) { s.sendHeartbeat() })
}

func (s *Node) sendHeartbeat() {
	s.noteMetaVoter()
	req := &tesserapb.NodeHeartbeatRequest{NodeId: s.replicaID, DiskUsedBytes: s.store.DiskSizeBytes(), DiskQuotaBytes: s.cfg.QuotaBackendBytes,
		MetaReplicaId: s.meta.ReplicaID()}
	for _, r := range s.rangeList() {
		load := &tesserapb.RangeLoad{RangeId: r.RangeID(), Leader: r.IsLeader(), Qps: r.QPS()}
		if rsm := s.store.Range(r.RangeID()); rsm != nil {
			load.SizeBytes = rsm.SizeBytes()
		}
		req.Ranges = append(req.Ranges, load)
	}
	leader, term, ok := s.meta.Leader()
	if ok && leader == s.replicaID {
		s.live.record(term, req)
		return
	}
	ctx, cancel := s.stopper.WithTimeout(s.heartbeatInterval())
	defer cancel()
	if !ok {
		// This node's meta replica knows no leader (an election, or the
		// replica was removed while the node was down): another node
		// passes the heartbeat on, so the meta leader hears of this node
		// and can add it again.
		if leader = s.anotherNode(ctx); leader == 0 {
			return
		}
	}
	if cc, err := s.directory.Conn(ctx, leader); err == nil {
		_, err = tesserapb.NewInternalClient(cc).NodeHeartbeat(ctx, req)
		if err != nil {
			s.log.Debug("heartbeat to the meta leader", "via", leader, "err", err)
		}
	}
}

// startPlacement runs the schedulers on the meta leader every placement
// interval (never when the interval is negative).
func (s *Node) startPlacement() {
	interval := s.cfg.PlacementInterval
	if interval < 0 {
		return
	}
	if interval == 0 {
		interval = defaultPlacementInterval
	}
	_ = s.stopper.Every(interval, func(time.Time) { s.placeOnce() })
}

// placeOnce runs the schedulers once, if this node leads the meta range and
// has heard heartbeats long enough to judge the nodes, and starts the
// operations they propose. It returns them.
func (s *Node) placeOnce() []placement.Op {
	ctx, cancel := s.stopper.WithTimeout(s.heartbeatInterval())
	defer cancel()
	term, nodes, descs, ok := s.placementInputs(ctx)
	if !ok {
		return nil
	}
	members, membersOK := s.metaMembership()
	l := &s.live
	l.mu.Lock()
	l.termLocked(term)
	if time.Since(l.since) < s.suspectAfter() {
		l.mu.Unlock()
		return nil // not heard from everyone yet
	}
	c := s.clusterStateLocked(nodes, descs)
	if !l.changingMeta && membersOK {
		running := map[uint64]uint64{}
		for id, b := range l.beats {
			if time.Since(b.at) < s.suspectAfter() {
				running[id] = b.req.MetaReplicaId
			}
		}
		if ch, ok := planMetaChange(c, members, running, l.removing); ok {
			l.changingMeta = true
			if err := s.stopper.RunAsync(func() { s.changeMeta(ch) }); err != nil {
				l.changingMeta = false
			}
		}
	}
	ops := placement.Schedule(c, placement.Limits{})
	for _, op := range ops {
		if _, busy := l.placing[op.Range]; busy {
			continue
		}
		if l.placing == nil {
			l.placing = map[uint64]placement.Op{}
		}
		l.placing[op.Range] = op
		if err := s.stopper.RunAsync(func() { s.runOp(op) }); err != nil {
			delete(l.placing, op.Range)
		}
	}
	l.mu.Unlock()
	return ops
}

// placementInputs returns, when this node leads the meta range, its term,
// the registered nodes and the recorded ranges; ok is false otherwise or
// when they cannot be read.
func (s *Node) placementInputs(ctx context.Context) (term uint64, nodes []*tesserapb.NodeInfo, descs []*tesserapb.RangeDescriptor, ok bool) {
	leads, term := s.metaTerm()
	if !leads {
		return 0, nil, nil, false
	}
	nodes, err := s.directory.Nodes(ctx)
	if err != nil {
		return 0, nil, nil, false
	}
	descs, err = meta.Ranges(ctx, s.meta, false)
	if err != nil {
		return 0, nil, nil, false
	}
	return term, nodes, descs, true
}

// clusterStateLocked is the schedulers' view with the operations running
// now; s.live.mu must be held.
func (s *Node) clusterStateLocked(nodes []*tesserapb.NodeInfo, descs []*tesserapb.RangeDescriptor) *placement.Cluster {
	l := &s.live
	c := s.clusterState(nodes, descs, l.beats, l.since)
	for _, op := range l.placing {
		c.InFlight = append(c.InFlight, op)
	}
	return c
}

// placementView is what placement sees on this node, the meta leader, and
// would propose now, without running anything; nil if this node does not
// lead the meta range.
func (s *Node) placementView(ctx context.Context) (*placement.Cluster, []placement.Op) {
	term, nodes, descs, ok := s.placementInputs(ctx)
	if !ok {
		return nil, nil
	}
	l := &s.live
	l.mu.Lock()
	defer l.mu.Unlock()
	l.termLocked(term)
	c := s.clusterStateLocked(nodes, descs)
	return c, placement.Schedule(c, placement.Limits{})
}

// clusterState is the schedulers' view: every registered node with its
// liveness and disk, every recorded range with its voters, its leader and
// load as its nodes report them.
func (s *Node) clusterState(nodes []*tesserapb.NodeInfo, descs []*tesserapb.RangeDescriptor, beats map[uint64]heartbeat, since time.Time) *placement.Cluster {
	c := &placement.Cluster{Replicas: s.cfg.Replicas}
	now := time.Now()
	// A range's leader is the node that said so last, among the nodes
	// heard from lately (a node that stopped may have led it).
	loads := map[uint64]*tesserapb.RangeLoad{}
	leaders := map[uint64]uint64{}
	saidAt := map[uint64]time.Time{}
	fresh := s.suspectAfter()
	for _, id := range slices.Sorted(maps.Keys(beats)) {
		b := beats[id]
		if now.Sub(b.at) >= fresh {
			continue
		}
		for _, rl := range b.req.Ranges {
			if rl.Leader && b.at.After(saidAt[rl.RangeId]) {
				leaders[rl.RangeId], loads[rl.RangeId], saidAt[rl.RangeId] = id, rl, b.at
			}
		}
	}
	for _, n := range nodes {
		pn := placement.Node{ID: n.NodeId, State: s.nodeState(n, beats, since, now)}
		if n.Name == "" {
			// Added by MemberAdd and not started: it can take nothing.
			pn.State = placement.NodeDead
		}
		if b, ok := beats[n.NodeId]; ok {
			pn.DiskUsedBytes, pn.DiskQuotaBytes = b.req.DiskUsedBytes, b.req.DiskQuotaBytes
		}
		c.Nodes = append(c.Nodes, pn)
	}
	for _, d := range descs {
		// The first range's leader keeps the lease clock, and a new one
		// gives every lease its full TTL again: it moves only when its
		// replica must.
		ri := placement.RangeInfo{ID: d.RangeId, Leader: leaders[d.RangeId], KeepLeader: d.RangeId == firstRangeID}
		for _, id := range d.ReplicaNodeIds {
			ri.Replicas = append(ri.Replicas, placement.Replica{NodeID: id, ReplicaID: id, Role: placement.Voter})
		}
		if l := loads[d.RangeId]; l != nil {
			ri.SizeBytes, ri.QPS = l.SizeBytes, l.Qps
		}
		c.Ranges = append(c.Ranges, ri)
	}
	return c
}

// nodeState judges a node by how long since it was heard from (counting
// from since, when the meta leader began listening, for a node not heard
// from at all) and whether it is leaving.
func (s *Node) nodeState(n *tesserapb.NodeInfo, beats map[uint64]heartbeat, since, now time.Time) placement.NodeState {
	last := since
	if b, ok := beats[n.NodeId]; ok {
		last = b.at
	}
	switch age := now.Sub(last); {
	case age >= s.deadNodeTimeout():
		return placement.NodeDead
	case n.Decommissioning:
		return placement.NodeDecommissioning
	case age >= s.suspectAfter():
		return placement.NodeSuspect
	}
	return placement.NodeLive
}

func (s *Node) deadNodeTimeout() time.Duration {
	if s.cfg.DeadNodeTimeout > 0 {
		return s.cfg.DeadNodeTimeout
	}
	return DefaultDeadNodeTimeout
}

// runOp carries out one operation the schedulers proposed.
func (s *Node) runOp(op placement.Op) {
	defer func() {
		s.live.mu.Lock()
		delete(s.live.placing, op.Range)
		s.live.mu.Unlock()
	}()
	ctx, cancel := s.stopper.WithTimeout(knobOr(s.cfg.Knobs.PlacementOpTimeout, placementOpTimeout))
	defer cancel()
	var err error
	switch op.Kind {
	case placement.MoveReplica, placement.AddReplica, placement.RemoveReplica:
		req := &tesserapb.ChangeReplicasRequest{RangeId: op.Range}
		if op.Kind != placement.RemoveReplica {
			req.AddNodeId = op.To
		}
		if op.Kind != placement.AddReplica {
			req.RemoveNodeId = op.From
		}
		_, err = s.Internal().ChangeReplicas(ctx, req)
	case placement.TransferLeader:
		_, err = s.Internal().TransferLeader(ctx, &tesserapb.TransferLeaderRequest{RangeId: op.Range, ToNodeId: op.To})
	}
	if err != nil {
		s.log.Warn("placement operation failed", "op", op.String(), "err", err)
		return
	}
	s.log.Info("placement operation done", "op", op.String())
	if op.Kind != placement.TransferLeader {
		s.placeSoon()
	}
}

// placeSoon runs a placement pass now (one at a time) after a replica
// operation ended: the nodes it involved can take the next move at once,
// rather than at the next pass of the placement interval (a node rebuilt
// after a death or a new node filled waits for passes otherwise, not for
// copying).
func (s *Node) placeSoon() {
	if s.cfg.PlacementInterval < 0 || !s.placingSoon.CompareAndSwap(false, true) {
		return
	}
	if err := s.stopper.RunAsync(func() {
		defer s.placingSoon.Store(false)
		s.placeOnce()
	}); err != nil {
		s.placingSoon.Store(false)
	}
}

// TransferLeader serves Internal.TransferLeader on a node holding the range
// (others pass it to one).
func (i *internalService) TransferLeader(ctx context.Context, req *tesserapb.TransferLeaderRequest) (*tesserapb.TransferLeaderResponse, error) {
	s := i.s
	if req.RangeId == meta.RangeID {
		// The oracle's lease must end before the meta leadership moves.
		return nil, status.Error(codes.InvalidArgument, "tessera: the meta range's leadership is not moved by TransferLeader")
	}
	if s.rangeByID(req.RangeId) == nil {
		err := s.router.OnReplica(ctx, req.RangeId, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := tesserapb.NewInternalClient(cc).TransferLeader(ctx, req)
			return err
		})
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		return &tesserapb.TransferLeaderResponse{}, nil
	}
	to, ok := s.replicaOf(req.RangeId, req.ToNodeId)
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: node %d holds no replica of range %d", req.ToNodeId, req.RangeId)
	}
	if err := s.nh.RequestLeaderTransfer(req.RangeId, to); err != nil {
		return nil, status.Errorf(codes.Unavailable, "tessera: moving range %d's leadership to node %d: %v", req.RangeId, req.ToNodeId, err)
	}
	return &tesserapb.TransferLeaderResponse{}, nil
}

// onMetaLeader runs a call on the meta range's leader: here when this node
// leads it, else on the leader's node (OnMetaLeader).
func onMetaLeader[T any](ctx context.Context, s *Node, here func() (T, error), there func(context.Context, tesserapb.InternalClient) (T, error)) (T, error) {
	return OnMetaLeader(ctx, s, s.directory.Conn, here, func(ctx context.Context, cc *grpc.ClientConn) (T, error) {
		return there(ctx, tesserapb.NewInternalClient(cc))
	}, status.Error(codes.Unavailable, "tessera: the meta range has no leader; retry"))
}

// metaLeaderWait bounds how long a call for the meta leader waits for one it
// can reach: after the leader's node stops, the others elect another within
// an election timeout or two.
const metaLeaderWait = 5 * time.Second

// OnMetaLeader runs here when this node leads the meta range, else there on
// a connection (conn) to the leader's node, once. While the meta range has
// no leader, or the leader's node cannot be reached so the call was never
// sent, it waits for a leader it can reach, up to metaLeaderWait; then it
// answers noLeader. A call that was sent is not made again (it may have
// been carried out).
func OnMetaLeader[T any](ctx context.Context, s *Node, conn func(context.Context, uint64) (*grpc.ClientConn, error),
	here func() (T, error), there func(context.Context, *grpc.ClientConn) (T, error), noLeader error) (T, error) {
	var zero T
	if !router.MayForward(ctx) {
		if leader, _, ok := s.meta.Leader(); ok && leader == s.replicaID {
			return here()
		}
		return zero, noLeader
	}
	deadline := time.Now().Add(metaLeaderWait)
	for {
		if leader, _, ok := s.meta.Leader(); ok {
			if leader == s.replicaID {
				return here()
			}
			cc, err := conn(ctx, leader)
			if err == nil {
				resp, err := there(router.ForwardedContext(ctx), cc)
				if err == nil || !router.DialFailed(err) {
					return resp, err
				}
			}
		}
		if time.Now().After(deadline) {
			return zero, noLeader
		}
		select {
		case <-ctx.Done():
			return zero, status.FromContextError(ctx.Err()).Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ListNodes serves Internal.ListNodes from the meta leader's view.
func (i *internalService) ListNodes(ctx context.Context, req *tesserapb.ListNodesRequest) (*tesserapb.ListNodesResponse, error) {
	s := i.s
	return onMetaLeader(ctx, s, func() (*tesserapb.ListNodesResponse, error) {
		st, err := meta.State(ctx, s.meta, true)
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		_, term := s.metaTerm()
		beats, since := s.live.view(term)
		now := time.Now()
		replicas := map[uint64]uint32{}
		for _, d := range st.Ranges {
			for _, id := range d.ReplicaNodeIds {
				replicas[id]++
			}
		}
		leaders := map[uint64]uint32{}
		for _, ri := range s.clusterState(st.Nodes, st.Ranges, beats, since).Ranges {
			if ri.Leader != 0 {
				leaders[ri.Leader]++
			}
		}
		resp := &tesserapb.ListNodesResponse{}
		for _, n := range st.Nodes {
			ns := &tesserapb.NodeStatus{NodeId: n.NodeId, Name: n.Name, RaftAddress: meta.PeerAddress(n), ClientUrls: n.ClientUrls,
				State: s.nodeState(n, beats, since, now).String(), Replicas: replicas[n.NodeId], Leaders: leaders[n.NodeId]}
			if n.Decommissioning && ns.Replicas == 0 {
				ns.State = "decommissioned"
			}
			if n.Name == "" {
				ns.State = "unstarted" // added by MemberAdd; it has not joined
			}
			if b, ok := beats[n.NodeId]; ok {
				ns.DiskUsedBytes = b.req.DiskUsedBytes
			}
			resp.Nodes = append(resp.Nodes, ns)
		}
		return resp, nil
	}, func(ctx context.Context, c tesserapb.InternalClient) (*tesserapb.ListNodesResponse, error) {
		return c.ListNodes(ctx, req)
	})
}

// Decommission serves Internal.Decommission on the meta leader: it refuses
// to leave fewer live nodes than --replicas, then marks the node as leaving.
func (i *internalService) Decommission(ctx context.Context, req *tesserapb.DecommissionRequest) (*tesserapb.DecommissionResponse, error) {
	s := i.s
	return onMetaLeader(ctx, s, func() (*tesserapb.DecommissionResponse, error) {
		nodes, err := i.ListNodes(ctx, &tesserapb.ListNodesRequest{})
		if err != nil {
			return nil, err
		}
		var target *tesserapb.NodeStatus
		liveOthers := 0
		for _, n := range nodes.Nodes {
			if n.Name == req.Node || strconv.FormatUint(n.NodeId, 10) == req.Node {
				target = n
			} else if n.State == placement.NodeLive.String() || n.State == placement.NodeSuspect.String() {
				liveOthers++
			}
		}
		switch {
		case target == nil:
			return nil, status.Errorf(codes.NotFound, "tessera: no node named or numbered %q in the cluster", req.Node)
		case target.State == placement.NodeDecommissioning.String() || target.State == "decommissioned":
			return &tesserapb.DecommissionResponse{NodeId: target.NodeId}, nil
		case liveOthers == 0:
			return nil, status.Errorf(codes.FailedPrecondition, "tessera: node %s is the cluster's last live node; its data has nowhere to go", req.Node)
		case liveOthers < s.cfg.Replicas:
			return nil, status.Errorf(codes.FailedPrecondition, "tessera: decommissioning node %s would leave %d live nodes, fewer than --replicas (%d); add a node first", req.Node, liveOthers, s.cfg.Replicas)
		}
		cmd := &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_SetDecommissioning{SetDecommissioning: &tesserapb.SetDecommissioningCommand{NodeId: target.NodeId, Decommissioning: true}}}
		if err := s.meta.Propose(ctx, cmd); err != nil {
			return nil, router.ToGRPC(err)
		}
		s.log.Info("node decommissioning", "node", target.NodeId, "name", target.Name)
		return &tesserapb.DecommissionResponse{NodeId: target.NodeId}, nil
	}, func(ctx context.Context, c tesserapb.InternalClient) (*tesserapb.DecommissionResponse, error) {
		return c.Decommission(ctx, req)
	})
}

// liveNodes returns the nodes the meta leader heard from lately (this one
// among them).
func (s *Node) liveNodes() map[uint64]bool {
	_, term := s.metaTerm()
	beats, _ := s.live.view(term)
	live := map[uint64]bool{s.replicaID: true}
	for id, b := range beats {
		if time.Since(b.at) < s.suspectAfter() {
			live[id] = true
		}
	}
	return live
}
