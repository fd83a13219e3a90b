package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// A node's Raft address and its peer address. Dragonboat records the
// address a node first started with (its Raft address) in its data and in
// every Raft group's membership, and refuses to start under another. So a
// node keeps that address as its name in Raft for good, recorded in
// memberFile, and may listen and advertise elsewhere: the node
// registry holds its current peer address (MemberUpdate sets it ahead of a
// restart, the node itself when it registers), and the Raft transport and
// node-to-node gRPC dial that.

// memberFile records, in a data directory, what a node keeps from its first
// start whatever its flags say later: its Raft address and its cluster's ID
// (which an --initial-cluster member derives from that flag when it first
// starts; etcd too ignores --initial-cluster on a restart).
const memberFile = "member.json"

type memberRecord struct {
	RaftAddress string `json:"raft_address"`
	ClusterID   uint64 `json:"cluster_id"`
}

// loadMember reads the node's record, empty when there is none (a new node,
// or data from a build that kept none).
func loadMember(dataDir string) (rec memberRecord, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, memberFile))
	if errors.Is(err, os.ErrNotExist) {
		return memberRecord{}, nil
	}
	if err != nil {
		return memberRecord{}, err
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.RaftAddress == "" || rec.ClusterID == 0 {
		return memberRecord{}, fmt.Errorf("%s in %s is damaged: %v", memberFile, dataDir, err)
	}
	return rec, nil
}

// saveMember records the node's Raft address and cluster ID.
func saveMember(dataDir string, rec memberRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return writeFileDurably(filepath.Join(dataDir, memberFile), append(b, '\n'))
}

// advertisedPeer is the host:port of this node's advertised peer URL.
func (s *Node) advertisedPeer() string {
	if len(s.cfg.InitialAdvertisePeerURLs) == 0 {
		return ""
	}
	addr, _ := hostPortOf(s.cfg.InitialAdvertisePeerURLs[0])
	return addr
}

// nodeInfo is this node's entry in the node registry as it registers.
func (s *Node) nodeInfo() *tesserapb.NodeInfo {
	n := &tesserapb.NodeInfo{NodeId: s.replicaID, Name: s.cfg.Name, ClientUrls: s.cfg.AdvertiseClientURLs, RaftAddress: s.raftAddr}
	if peer := s.advertisedPeer(); peer != s.raftAddr {
		n.PeerAddress = peer
	}
	return n
}

// resolvePeer is the Raft transport's Resolve: the current peer address of
// the node a Raft membership names by raftAddr.
func (s *Node) resolvePeer(ctx context.Context, raftAddr string) string {
	if d := s.peerDirectory.Load(); d != nil {
		return d.ResolvePeer(ctx, raftAddr)
	}
	return raftAddr
}

// UpdateNodePeer records a node's new peer URL (etcd's MemberUpdate). The
// node's Raft address stays as it is; the other nodes dial the new address
// from now on, so the node is restarted listening there. It runs on the
// meta leader.
func (s *Node) UpdateNodePeer(ctx context.Context, id uint64, peerURLs []string) error {
	addr, err := onePeerAddress(peerURLs)
	if err != nil {
		return err
	}
	st, node, err := s.registryEntry(ctx, id) // node is a copy: changing it changes nothing
	if err != nil {
		return err
	}
	if node == nil && !s.isJoined() && id >= 1 && id <= uint64(len(s.cfg.InitialCluster)) {
		// A member of --initial-cluster that has not started yet.
		raft, err := hostPortOf(s.cfg.InitialCluster[id-1].PeerURL)
		if err != nil {
			return status.Errorf(codes.Internal, "tessera: --initial-cluster member %d: %v", id, err)
		}
		node = &tesserapb.NodeInfo{NodeId: id, RaftAddress: raft}
	}
	if node == nil {
		return rpctypes.ErrGRPCMemberNotFound
	}
	if meta.AddressUsed(st.Nodes, addr, id) != 0 {
		return rpctypes.ErrGRPCPeerURLExist
	}
	node.PeerAddress = addr
	if addr == node.RaftAddress {
		node.PeerAddress = ""
	}
	if err := s.directory.Register(ctx, node); err != nil {
		return status.Errorf(codes.Unavailable, "tessera: recording node %d's peer URL: %v", id, err)
	}
	s.log.Info("node's peer URL updated", "node", id, "peer", addr)
	return nil
}

// PromoteNode answers etcd's MemberPromote. Every Tessera node is a full
// member (placement decides which ranges it votes in), so as etcd does for
// a voting member it refuses: etcd's error for a member that is not a
// learner, or for an unknown one.
func (s *Node) PromoteNode(ctx context.Context, id uint64) error {
	list, err := s.MemberList(ctx)
	if err != nil {
		return err
	}
	for _, m := range list.Members {
		if m.ID == id {
			return rpctypes.ErrGRPCMemberNotLearner
		}
	}
	return rpctypes.ErrGRPCMemberNotFound
}

// onePeerAddress is the host:port of the one peer URL a member request
// gives (MemberAdd, MemberUpdate).
func onePeerAddress(peerURLs []string) (string, error) {
	if len(peerURLs) != 1 {
		return "", status.Errorf(codes.InvalidArgument, "tessera: a node has one peer URL (got %d)", len(peerURLs))
	}
	addr, err := hostPortOf(peerURLs[0])
	if err != nil {
		return "", status.Errorf(codes.InvalidArgument, "tessera: peer URL %q: %v", peerURLs[0], err)
	}
	return addr, nil
}

// registryEntry reads a copy of the meta state as the meta leader has it
// and returns it with node id's entry in the node registry (nil: none).
func (s *Node) registryEntry(ctx context.Context, id uint64) (*tesserapb.MetaState, *tesserapb.NodeInfo, error) {
	st, err := meta.State(ctx, s.meta, true)
	if err != nil {
		return nil, nil, router.ToGRPC(err)
	}
	for _, n := range st.Nodes {
		if n.NodeId == id {
			return st, n, nil
		}
	}
	return st, nil, nil
}
