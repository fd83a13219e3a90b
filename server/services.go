package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// APIVersion is the etcd API level Tessera implements. kube-apiserver reads it
// from Status and turns off consistent and streaming lists below 3.5.13.
const APIVersion = "3.7.3"

// maintenance serves Maintenance.Status; the rest answers Unimplemented.
type maintenance struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

func (m *maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	s := m.s
	home := s.rangeByID(firstRangeID)
	if home == nil {
		return nil, router.ToGRPC(shard.ErrStopped)
	}
	// Raft figures are the first data range's; the revision is the cluster's.
	leader, term, _ := home.Leader()
	out, err := home.Read(ctx, false, func(v *statemachine.View) (any, error) {
		return [2]uint64{uint64(v.Revision()), v.AppliedIndex()}, nil
	})
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	revApplied := out.([2]uint64)
	if current, err := s.oracle.Current(ctx); err == nil {
		revApplied[0] = uint64(current)
	}
	size := s.store.DiskSizeBytes()
	return &pb.StatusResponse{
		Header:           &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID, Revision: int64(revApplied[0]), RaftTerm: term},
		Version:          APIVersion,
		DbSize:           size,
		DbSizeInUse:      size,
		DbSizeQuota:      s.cfg.QuotaBackendBytes,
		Leader:           leader,
		RaftIndex:        revApplied[1],
		RaftTerm:         term,
		RaftAppliedIndex: revApplied[1],
		StorageVersion:   "3.7.0",
	}, nil
}

// Alarm lists the NOSPACE alarm while the store exceeds its quota; it clears
// itself once the store is back under the quota (etcd needs a disarm).
func (m *maintenance) Alarm(_ context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	if req.Action == pb.AlarmRequest_ACTIVATE {
		return nil, status.Error(codes.Unimplemented, "tessera: raising alarms by hand is not implemented")
	}
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{ClusterId: m.s.clusterID, MemberId: m.s.replicaID}}
	if req.Action == pb.AlarmRequest_GET && m.s.spaceExceeded.Load() {
		resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: m.s.replicaID, Alarm: pb.AlarmType_NOSPACE})
	}
	return resp, nil
}

func (m *maintenance) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: defragment is not implemented (Pebble compacts on its own)")
}

func (m *maintenance) Hash(context.Context, *pb.HashRequest) (*pb.HashResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: Hash is not implemented yet")
}

func (m *maintenance) HashKV(context.Context, *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: HashKV is not implemented yet")
}

func (m *maintenance) Snapshot(*pb.SnapshotRequest, pb.Maintenance_SnapshotServer) error {
	return status.Error(codes.Unimplemented, "tessera: snapshot is not implemented yet")
}

func (m *maintenance) MoveLeader(context.Context, *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: move-leader is not implemented yet")
}

func (m *maintenance) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: downgrade is not supported")
}

// cluster serves Cluster.MemberList from the static --initial-cluster and the
// client URLs each member has published; membership changes answer Unimplemented.
type cluster struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *cluster) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	s := c.s
	nodes, err := s.directory.Nodes(ctx)
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	registered := map[uint64]*tesserapb.NodeInfo{}
	for _, n := range nodes {
		registered[n.NodeId] = n
	}
	var term uint64
	if home := s.rangeByID(firstRangeID); home != nil {
		_, term, _ = home.Leader()
	}
	resp := &pb.MemberListResponse{Header: &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID, RaftTerm: term}}
	if !s.joined {
		metaVoters := s.membersOf(meta.RangeID)
		for i, m := range s.cfg.InitialCluster {
			id := uint64(i + 1)
			if _, ok := registered[id]; !ok {
				if _, voter := metaVoters[id]; !voter {
					continue // removed (MemberRemove)
				}
			}
			member := &pb.Member{ID: id, PeerURLs: []string{m.PeerURL}}
			if n, ok := registered[id]; ok {
				// As in etcd, a member that has not published yet has no name.
				member.Name = n.Name
				member.ClientURLs = n.ClientUrls
				delete(registered, id)
			}
			resp.Members = append(resp.Members, member)
		}
	}
	// Nodes that joined (and, on a node that joined, every node).
	for _, n := range nodes {
		if _, ok := registered[n.NodeId]; ok {
			resp.Members = append(resp.Members, &pb.Member{ID: n.NodeId, Name: n.Name, PeerURLs: []string{"http://" + n.RaftAddress}, ClientURLs: n.ClientUrls})
		}
	}
	return resp, nil
}

func (c *cluster) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: nodes are added by starting them with --join (member add is not needed)")
}

// MemberRemove takes a node out of the cluster: out of the meta range and
// the node registry. A node still holding range replicas is refused
// (decommission it first); so is a removal that would leave the meta range
// without a quorum of live voters, with etcd's error.
func (c *cluster) MemberRemove(ctx context.Context, req *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	s := c.s
	leader, _, ok := s.meta.Leader()
	switch {
	case !ok:
		return nil, rpctypes.ErrGRPCNoLeader
	case leader != s.replicaID:
		// The meta range's leader removes nodes: ask it.
		cc, err := s.directory.Conn(ctx, leader)
		if err != nil || !router.MayForward(ctx) {
			return nil, rpctypes.ErrGRPCNoLeader
		}
		return pb.NewClusterClient(cc).MemberRemove(router.ForwardedContext(ctx), req)
	}
	if err := s.removeNode(ctx, req.ID); err != nil {
		return nil, err
	}
	list, err := c.MemberList(ctx, &pb.MemberListRequest{})
	if err != nil {
		return nil, err
	}
	return &pb.MemberRemoveResponse{Header: list.Header, Members: list.Members}, nil
}

func (c *cluster) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: membership changes are not implemented yet (static --initial-cluster only)")
}

func (c *cluster) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: learners are not implemented yet")
}

// hubSource is what the watch hub reads through: the store's history and
// the router's ranges and oracle.
type hubSource struct{ s *Server }

func (h hubSource) History(key, rangeEnd []byte, fromRev, toRev int64, maxEvents int) ([]*mvccpb.Event, int64, error) {
	return h.s.history(key, rangeEnd, fromRev, toRev, maxEvents)
}

func (h hubSource) CompactedRevision(key, rangeEnd []byte) (int64, error) {
	return h.s.compactedRevision(key, rangeEnd)
}

func (h hubSource) Follow(rangeID uint64) { h.s.follow(rangeID) }

func (h hubSource) RangesOf(key, rangeEnd []byte) ([]uint64, bool) {
	return h.s.router.RangesOf(key, rangeEnd)
}

func (h hubSource) CloseRange(ctx context.Context, rangeID uint64) (int64, error) {
	return h.s.router.CloseRange(ctx, rangeID)
}

func (h hubSource) CurrentRevision(ctx context.Context) (int64, error) {
	return h.s.router.CurrentRevision(ctx)
}

func (h hubSource) Header(rev int64) *pb.ResponseHeader { return h.s.router.Header(rev) }

func (h hubSource) HasLeader() bool {
	_, _, ok := h.s.meta.Leader()
	return ok
}

// unimplementedAuth: authentication is not implemented; AuthStatus reports it
// disabled so clients that only ask can proceed.
type unimplementedAuth struct{ pb.UnimplementedAuthServer }

func (unimplementedAuth) AuthStatus(context.Context, *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return &pb.AuthStatusResponse{Enabled: false}, nil
}

func (unimplementedAuth) Authenticate(context.Context, *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: authentication is not implemented yet")
}
