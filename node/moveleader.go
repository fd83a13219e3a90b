package node

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
)

// moveLeaderTimeout bounds MoveLeader's wait for the new meta leader.
const moveLeaderTimeout = 5 * time.Second

// errLeaderTransferTimeout is etcd's answer when the new leader does not
// take over in time.
var errLeaderTransferTimeout = status.Error(codes.Unavailable, "etcdserver: request timed out, leader transfer took too long")

// MoveLeader serves etcd's Maintenance.MoveLeader. The leader etcd's tools
// see is the meta range's (Status names it on every member), so it is
// asked of the node leading the meta range, as etcd's of its leader
// (elsewhere: etcd's "not leader"). That node hands target the leadership
// of every range it leads where target holds a voting replica, then the
// meta range's, and answers once target leads the meta range. Placement
// may later move data ranges' leaderships again to balance them.
func (s *Node) MoveLeader(ctx context.Context, target uint64) (*pb.MoveLeaderResponse, error) {
	if leader, _, ok := s.meta.Leader(); !ok || leader != s.replicaID {
		return nil, rpctypes.ErrGRPCNotLeader
	}
	m, ok := s.metaMembership()
	if !ok {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	rid, voter, found := m.replicaOf(target)
	if !found || !voter {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	header := &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID}
	if target == s.replicaID {
		return &pb.MoveLeaderResponse{Header: header}, nil
	}
	for _, rng := range s.rangeList() {
		if !rng.IsLeader() {
			continue
		}
		if to, ok := s.replicaOf(rng.RangeID(), target); ok {
			if err := s.nh.RequestLeaderTransfer(rng.RangeID(), to); err != nil {
				s.log.Debug("moving a range's leadership", "range", rng.RangeID(), "to", target, "err", err)
			}
		}
	}
	// The oracle's lease ends before its leadership moves (docs/design.md,
	// "The allocator").
	s.allocator.EndLease()
	if err := s.nh.RequestLeaderTransfer(meta.RangeID, rid); err != nil {
		return nil, status.Errorf(codes.Unavailable, "tessera: moving the meta range's leadership to node %d: %v", target, err)
	}
	ctx, cancel := context.WithTimeout(ctx, moveLeaderTimeout)
	defer cancel()
	for {
		if leader, _, ok := s.meta.Leader(); ok && leader == target {
			return &pb.MoveLeaderResponse{Header: header}, nil
		}
		select {
		case <-ctx.Done():
			return nil, errLeaderTransferTimeout
		case <-time.After(10 * time.Millisecond):
		}
	}
}
