package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/router"
)

// APIVersion is the etcd API level Tessera implements (node.APIVersion).
const APIVersion = node.APIVersion

// maintenance serves etcd's Maintenance service; Downgrade answers
// Unimplemented.
type maintenance struct {
	pb.UnimplementedMaintenanceServer
	n *node.Node
}

func (m *maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	resp, err := m.n.Status(ctx)
	if err != nil {
		return nil, err
	}
	resp.Version = APIVersion
	return resp, nil
}

// Alarm lists the NOSPACE alarm while the store exceeds its quota; it clears
// itself once the store is back under the quota (etcd needs a disarm).
func (m *maintenance) Alarm(_ context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	if req.Action == pb.AlarmRequest_ACTIVATE {
		return nil, status.Error(codes.Unimplemented, "tessera: raising alarms by hand is not implemented")
	}
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{ClusterId: m.n.ClusterID(), MemberId: m.n.ID()}}
	if req.Action == pb.AlarmRequest_GET && m.n.SpaceExceeded() {
		resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: m.n.ID(), Alarm: pb.AlarmType_NOSPACE})
	}
	return resp, nil
}

// Defragment compacts the node's whole Pebble (node.Defragment).
func (m *maintenance) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return m.n.Defragment(ctx)
}

// Hash is HashKV at the current revision: etcd hashes its whole backend
// file, whose format Tessera does not have.
func (m *maintenance) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	resp, err := m.n.HashKV(ctx, 0)
	if err != nil {
		return nil, err
	}
	return &pb.HashResponse{Header: resp.Header, Hash: resp.Hash}, nil
}

// HashKV checksums the history of the ranges this node holds (node.HashKV).
func (m *maintenance) HashKV(ctx context.Context, req *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return m.n.HashKV(ctx, req.Revision)
}

// Snapshot streams an etcd v3 snapshot of the keyspace at one revision
// (node.Snapshot), which `etcdctl snapshot save` stores and `tessera ctl
// restore` or `etcdutl snapshot restore` restore.
func (m *maintenance) Snapshot(_ *pb.SnapshotRequest, srv pb.Maintenance_SnapshotServer) error {
	return router.ToGRPC(m.n.Snapshot(srv.Context(), srv.Send))
}

// MoveLeader moves the meta range's leadership, and that of the ranges the
// node leads, to another node (node.MoveLeader).
func (m *maintenance) MoveLeader(ctx context.Context, req *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	return m.n.MoveLeader(ctx, req.TargetID)
}

func (m *maintenance) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "tessera: downgrade is not supported")
}

// cluster serves etcd's Cluster service: the members are Tessera's nodes.
type cluster struct {
	pb.UnimplementedClusterServer
	n *node.Node
}

func (c *cluster) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	return c.n.MemberList(ctx)
}

// MemberAdd registers a node that has not started yet under a new ID (see
// node.AddNode); the node then starts with --join and the peer URL given
// here. Tessera has no learner members: a joining node's meta replica
// starts as a non-voter anyway, and takes range replicas as placement
// gives them.
func (c *cluster) MemberAdd(ctx context.Context, req *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if req.IsLearner {
		return nil, status.Error(codes.InvalidArgument, "tessera: nodes are not added as learners (a node that joins votes in no range until placement makes it); add it without --learner")
	}
	return onMetaLeader(ctx, c, pb.ClusterClient.MemberAdd, req, func() (*pb.MemberAddResponse, error) {
		id, err := c.n.AddNode(ctx, req.PeerURLs)
		if err != nil {
			return nil, err
		}
		list, err := c.MemberList(ctx, &pb.MemberListRequest{})
		if err != nil {
			return nil, err
		}
		return &pb.MemberAddResponse{Header: list.Header, Member: &pb.Member{ID: id, PeerURLs: req.PeerURLs}, Members: list.Members}, nil
	})
}

// MemberRemove takes a node out of the cluster: out of the meta range and
// the node registry. A node still holding range replicas is refused
// (decommission it first); so is a removal that would leave the meta range
// without a quorum of live voters, with etcd's error.
func (c *cluster) MemberRemove(ctx context.Context, req *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return onMetaLeader(ctx, c, pb.ClusterClient.MemberRemove, req, func() (*pb.MemberRemoveResponse, error) {
		if err := c.n.RemoveNode(ctx, req.ID); err != nil {
			return nil, err
		}
		list, err := c.MemberList(ctx, &pb.MemberListRequest{})
		if err != nil {
			return nil, err
		}
		return &pb.MemberRemoveResponse{Header: list.Header, Members: list.Members}, nil
	})
}

// onMetaLeader runs here on the meta range's leader, which changes the
// membership, and elsewhere passes the request there (node.OnMetaLeader:
// while no leader can be reached it waits for one, then answers etcd's
// "no leader").
func onMetaLeader[Req, Resp any](ctx context.Context, c *cluster, call func(pb.ClusterClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req, here func() (Resp, error)) (Resp, error) {
	return node.OnMetaLeader(ctx, c.n, c.n.Conn, here, func(ctx context.Context, cc *grpc.ClientConn) (Resp, error) {
		return call(pb.NewClusterClient(cc), ctx, req)
	}, rpctypes.ErrGRPCNoLeader)
}

// MemberUpdate records a node's new peer URL (node.UpdateNodePeer): the
// other nodes reach it there from now on, so it is restarted listening
// there, as an etcd member is after `member update`.
func (c *cluster) MemberUpdate(ctx context.Context, req *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return onMetaLeader(ctx, c, pb.ClusterClient.MemberUpdate, req, func() (*pb.MemberUpdateResponse, error) {
		if err := c.n.UpdateNodePeer(ctx, req.ID, req.PeerURLs); err != nil {
			return nil, err
		}
		list, err := c.MemberList(ctx, &pb.MemberListRequest{})
		if err != nil {
			return nil, err
		}
		return &pb.MemberUpdateResponse{Header: list.Header, Members: list.Members}, nil
	})
}

// MemberPromote refuses as etcd does for a member that is not a learner:
// Tessera has none (node.PromoteNode).
func (c *cluster) MemberPromote(ctx context.Context, req *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return onMetaLeader(ctx, c, pb.ClusterClient.MemberPromote, req, func() (*pb.MemberPromoteResponse, error) {
		return nil, c.n.PromoteNode(ctx, req.ID)
	})
}
