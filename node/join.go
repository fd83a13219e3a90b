package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/raftinfo"
	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// Joining a running cluster (--join). A node with no data asks a member
// (Internal.JoinCluster, served by the meta range's leader) to admit it: the
// meta leader gives it the next node ID, registers it, and adds it to the
// meta range as a non-voting member, so that it reads the meta state
// locally. The node records its ID and the cluster's in its data directory
// (identityFile) before it starts Raft, and from then on starts from it,
// whatever --join says. Placement then gives it replicas.

// identityFile records, in a data directory, the node that joined a cluster.
const identityFile = "node.json"

type identity struct {
	NodeID    uint64 `json:"node_id"`
	ClusterID uint64 `json:"cluster_id"`
	Name      string `json:"name"`
	// MetaVoter: the node's meta replica was made a voter (it restarts as
	// one).
	MetaVoter bool `json:"meta_voter,omitempty"`
	// MetaReplicaID is the node's replica ID in the meta range when it is
	// not the node ID: the meta leader added the node again under a new
	// incarnation after its replica was removed (restartMeta).
	MetaReplicaID uint64 `json:"meta_replica_id,omitempty"`
}

// metaReplicaID is the node's replica ID in the meta range.
func (id identity) metaReplicaID() uint64 {
	if id.MetaReplicaID != 0 {
		return id.MetaReplicaID
	}
	return id.NodeID
}

// loadIdentity reads the identity a joined node recorded; ok is false when
// there is none (a node of --initial-cluster, or a new one).
func loadIdentity(dataDir string) (id identity, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return identity{}, false, nil
	}
	if err != nil {
		return identity{}, false, err
	}
	if err := json.Unmarshal(b, &id); err != nil || id.NodeID == 0 {
		return identity{}, false, fmt.Errorf("%s in %s is damaged: %v", identityFile, dataDir, err)
	}
	return id, true, nil
}

// saveIdentity records a joined node's identity durably.
func saveIdentity(dataDir string, id identity) error {
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return writeFileDurably(filepath.Join(dataDir, identityFile), append(b, '\n'))
}

// writeFileDurably replaces path with data: written to a temporary file,
// synced, then renamed over path.
func writeFileDurably(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// nodeIdentity returns the identity of a node that joined a cluster: the
// one its data directory records, or, for a node with no data and --join,
// the one the cluster gives it now (recorded before anything else starts).
// joined is false for a member of --initial-cluster.
func nodeIdentity(cfg Config, peerTLS *tls.Config) (id identity, joined bool, err error) {
	id, ok, err := loadIdentity(cfg.DataDir)
	switch {
	case err != nil:
		return identity{}, false, err
	case ok && id.Name != cfg.Name:
		return identity{}, false, fmt.Errorf("data in %s belongs to node %d named %q, not %q (--name must not change once a node has joined)", cfg.DataDir, id.NodeID, id.Name, cfg.Name)
	case ok:
		return id, true, nil
	case len(cfg.Join) == 0 && cfg.InitialClusterState != "existing":
		return identity{}, false, nil
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "raft")); err == nil {
		if len(cfg.Join) == 0 {
			return identity{}, false, nil // a member of its --initial-cluster, restarting
		}
		return identity{}, false, fmt.Errorf("data in %s belongs to a member of an --initial-cluster; --join is for a node with no data (start it with its --initial-cluster, or give --join a new --data-dir)", cfg.DataDir)
	}
	if id, err = joinCluster(cfg, peerTLS); err != nil {
		return identity{}, false, err
	}
	if err := saveIdentity(cfg.DataDir, id); err != nil {
		return identity{}, false, fmt.Errorf("recording this node's identity in %s: %w", cfg.DataDir, err)
	}
	return id, true, nil
}

// joinWait bounds how long a new node keeps asking to be admitted while the
// members it names cannot answer (starting, or electing a meta leader).
const joinWait = 30 * time.Second

// joinCluster asks the members at cfg.Join to admit this node and returns
// its identity. With peer TLS it asks on their peer URLs, showing its peer
// certificate (it learns them from the members' client URLs). Without
// --join (--initial-cluster-state existing) it asks the other
// --initial-cluster members on their peer URLs.
func joinCluster(cfg Config, peerTLS *tls.Config) (identity, error) {
	raftAddr, _ := hostPortOf(cfg.InitialAdvertisePeerURLs[0])
	req := &tesserapb.JoinClusterRequest{Name: cfg.Name, RaftAddress: raftAddr, ClientUrls: cfg.AdvertiseClientURLs}
	ask, urls, flag := askToJoin, cfg.Join, "--join"
	if len(urls) == 0 {
		flag = "--initial-cluster"
		for _, m := range cfg.InitialCluster {
			if m.Name != cfg.Name {
				urls = append(urls, m.PeerURL)
			}
		}
		if len(urls) == 0 {
			return identity{}, fmt.Errorf("--initial-cluster-state existing: --initial-cluster names no member but this one (%s) to join", cfg.Name)
		}
		ask = func(cfg *Config, url string, req *tesserapb.JoinClusterRequest, peerTLS *tls.Config) (*tesserapb.JoinClusterResponse, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return joinOnPeer(ctx, cfg, url, req, peerTLS)
		}
	}
	deadline := time.Now().Add(joinWait)
	var lastErr error
	for time.Now().Before(deadline) {
		for _, u := range urls {
			resp, err := ask(&cfg, u, req, peerTLS)
			if err == nil {
				return identity{NodeID: resp.NodeId, ClusterID: resp.ClusterId, Name: cfg.Name}, nil
			}
			if certificateRefused(err) {
				return identity{}, fmt.Errorf("%s %s refused this node: %s", flag, u, status.Convert(err).Message())
			}
			switch status.Code(err) {
			case codes.Unimplemented:
				return identity{}, fmt.Errorf("%s %s answers, but is not a member of a Tessera cluster: %v", flag, u, status.Convert(err).Message())
			case codes.AlreadyExists, codes.InvalidArgument, codes.FailedPrecondition:
				return identity{}, fmt.Errorf("%s %s refused this node: %s", flag, u, status.Convert(err).Message())
			}
			lastErr = fmt.Errorf("%s %s: %v", flag, u, status.Convert(err).Message())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return identity{}, fmt.Errorf("no member named by %s admitted this node within %v: %w", flag, joinWait, lastErr)
}

func askToJoin(cfg *Config, url string, req *tesserapb.JoinClusterRequest, peerTLS *tls.Config) (*tesserapb.JoinClusterResponse, error) {
	hp, err := hostPortOf(url)
	if err != nil {
		return nil, err
	}
	opts, err := cfg.memberDialOptions(url)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(hp, opts...)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if peerTLS == nil {
		return tesserapb.NewInternalClient(cc).JoinCluster(ctx, req)
	}
	members, err := pb.NewClusterClient(cc).MemberList(ctx, &pb.MemberListRequest{})
	if err != nil {
		return nil, err
	}
	err = status.Errorf(codes.Unavailable, "tessera: %s lists no member with a peer URL", url)
	for _, m := range members.Members {
		for _, p := range m.PeerURLs {
			var resp *tesserapb.JoinClusterResponse
			if resp, err = joinOnPeer(ctx, cfg, p, req, peerTLS); err == nil {
				return resp, nil
			}
		}
	}
	return nil, err
}

// certificateRefused reports whether a TLS handshake failed over a
// certificate (which asking again does not cure).
func certificateRefused(err error) bool {
	msg := status.Convert(err).Message()
	return strings.Contains(msg, "certificate") || strings.Contains(msg, "x509: ")
}

// joinOnPeer asks a member to admit this node on its peer URL.
func joinOnPeer(ctx context.Context, cfg *Config, peerURL string, req *tesserapb.JoinClusterRequest, peerTLS *tls.Config) (*tesserapb.JoinClusterResponse, error) {
	hp, err := hostPortOf(peerURL)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(hp, cfg.nodeDialOptions(peerTLS)...)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := tesserapb.NewInternalClient(cc).JoinCluster(ctx, req)
	if err != nil {
		st := status.Convert(err)
		return nil, status.Errorf(st.Code(), "peer URL %s: %s", peerURL, st.Message())
	}
	return resp, nil
}

// JoinCluster serves Internal.JoinCluster on the meta leader.
func (i *internalService) JoinCluster(ctx context.Context, req *tesserapb.JoinClusterRequest) (*tesserapb.JoinClusterResponse, error) {
	s := i.s
	if req.Name == "" || req.RaftAddress == "" {
		return nil, status.Error(codes.InvalidArgument, "tessera: a joining node names itself (--name) and its peer address")
	}
	return onMetaLeader(ctx, s, func() (*tesserapb.JoinClusterResponse, error) {
		st, err := meta.State(ctx, s.meta, true)
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		var id uint64
		highest := uint64(len(s.cfg.InitialCluster))
		for _, n := range st.Nodes {
			highest = max(highest, n.NodeId)
			switch {
			case n.Name == req.Name && n.RaftAddress == req.RaftAddress:
				id = n.NodeId // asked again: the answer was lost
			case n.Name == "" && n.RaftAddress == req.RaftAddress:
				id = n.NodeId // added by MemberAdd with this peer URL
			case n.Name == req.Name:
				return nil, status.Errorf(codes.AlreadyExists, "tessera: a node named %q is already a member (node %d, peer %s); give the new node another --name", req.Name, n.NodeId, n.RaftAddress)
			case n.RaftAddress == req.RaftAddress || n.PeerAddress == req.RaftAddress:
				return nil, status.Errorf(codes.AlreadyExists, "tessera: peer address %s is node %d's (%s)", req.RaftAddress, n.NodeId, n.Name)
			}
		}
		if id == 0 {
			if id, err = s.meta.AllocateNodeID(ctx, highest+1); err != nil {
				return nil, status.Errorf(codes.Unavailable, "tessera: allocating a node ID: %v", err)
			}
		}
		node := &tesserapb.NodeInfo{NodeId: id, Name: req.Name, RaftAddress: req.RaftAddress, ClientUrls: req.ClientUrls}
		if err := s.directory.Register(ctx, node); err != nil {
			return nil, status.Errorf(codes.Unavailable, "tessera: registering node %d: %v", id, err)
		}
		m, err := s.nh.SyncGetShardMembership(ctx, meta.RangeID)
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		if _, _, member := membersFrom(m).replicaOf(id); !member {
			s.allocator.EndLease()
			if err := s.nh.SyncRequestAddNonVoting(ctx, meta.RangeID, id, req.RaftAddress, m.ConfigChangeID); err != nil {
				return nil, status.Errorf(codes.Unavailable, "tessera: adding node %d to the meta range: %v", id, err)
			}
		}
		s.log.Info("node joined", "node", id, "name", req.Name, "peer", req.RaftAddress)
		return &tesserapb.JoinClusterResponse{NodeId: id, ClusterId: s.clusterID, Replicas: uint32(s.cfg.Replicas)}, nil
	}, func(ctx context.Context, c tesserapb.InternalClient) (*tesserapb.JoinClusterResponse, error) {
		return c.JoinCluster(ctx, req)
	})
}

// noteMetaVoter records, once a joined node's meta replica has been made a
// voter, that it restarts as one. (Restarted as a non-voter after a
// promotion it had not recorded, the replica would not vote until it
// installs a snapshot of the meta range; the other way round Dragonboat
// refuses it.)
func (s *Node) noteMetaVoter() {
	s.idMu.Lock()
	done := !s.joined || s.identity.MetaVoter
	s.idMu.Unlock()
	if done {
		return
	}
	si, ok := raftinfo.Shard(s.nh, meta.RangeID)
	if !ok || si.IsNonVoting {
		return
	}
	if _, voter := si.Replicas[s.meta.ReplicaID()]; !voter {
		return
	}
	// The replica restarts as a voter from now on, so its log must not
	// replay the entry that added it as a non-voter (Dragonboat panics on
	// a voter re-added as one): a snapshot taken now, after its promotion
	// applied here, is where a restart begins. Until it is taken the
	// replica restarts as the non-voter it was started as, and replays
	// its promotion.
	ctx, cancel := s.stopper.WithTimeout(10 * time.Second)
	_, err := s.nh.SyncRequestSnapshot(ctx, meta.RangeID, dragonboat.SnapshotOption{})
	cancel()
	if err != nil && !errors.Is(err, dragonboat.ErrRejected) { // rejected: one at this index exists
		s.log.Debug("snapshotting the meta replica before recording that it votes", "err", err)
		return
	}
	if err := s.recordIdentity(func(id *identity) { id.MetaVoter = true }); err != nil {
		s.log.Warn("recording that this node's meta replica votes", "err", err)
	}
}

// recordIdentity changes the identity this node records in its data
// directory; from then on the node starts from it, as a node that joined
// does.
func (s *Node) recordIdentity(change func(*identity)) error {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	id := s.identity
	id.NodeID, id.ClusterID, id.Name = s.replicaID, s.clusterID, s.cfg.Name
	change(&id)
	if err := saveIdentity(s.cfg.DataDir, id); err != nil {
		return err
	}
	s.identity, s.joined = id, true
	return nil
}

// isJoined reports whether the node starts from its recorded identity
// rather than from --initial-cluster.
func (s *Node) isJoined() bool {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	return s.joined
}

// RemoveNode takes a node holding no range replica out of the cluster: out
// of the meta range and the node registry. It runs on the meta leader.
func (s *Node) RemoveNode(ctx context.Context, id uint64) error {
	st, node, err := s.registryEntry(ctx, id)
	if err != nil {
		return err
	}
	if node == nil {
		return rpctypes.ErrGRPCMemberNotFound
	}
	held := 0
	for _, d := range st.Ranges {
		if slices.Contains(d.ReplicaNodeIds, id) {
			held++
		}
	}
	if held > 0 {
		return status.Errorf(codes.FailedPrecondition, "tessera: node %d (%s) still holds %d range replicas; decommission it first (tessera ctl decommission %s)", id, node.Name, held, node.Name)
	}
	if id == s.replicaID {
		return status.Errorf(codes.FailedPrecondition, "tessera: node %d leads the meta range; remove it through another member after its leadership moves (stop it first)", id)
	}
	m, err := s.nh.SyncGetShardMembership(ctx, meta.RangeID)
	if err != nil {
		return router.ToGRPC(err)
	}
	s.live.mu.Lock()
	if s.live.removing == nil {
		s.live.removing = map[uint64]bool{}
	}
	s.live.removing[id] = true // placement must not add it back meanwhile
	s.live.mu.Unlock()
	rid, voter, member := membersFrom(m).replicaOf(id)
	if voter && !quorumWithout(m.Nodes, rid, s.liveNodes()) {
		return rpctypes.ErrGRPCMemberNotEnoughStarted
	}
	if member {
		s.allocator.EndLease()
		if err := s.nh.SyncRequestDeleteReplica(ctx, meta.RangeID, rid, m.ConfigChangeID); err != nil {
			return status.Errorf(codes.Unavailable, "tessera: removing node %d from the meta range: %v", id, err)
		}
	}
	cmd := &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_RemoveNode{RemoveNode: &tesserapb.RemoveNodeCommand{NodeId: id}}}
	if err := s.meta.Propose(ctx, cmd); err != nil {
		return router.ToGRPC(err)
	}
	s.log.Info("node removed", "node", id, "name", node.Name)
	return nil
}

// quorumWithout reports whether the voters other than the one given still
// have a quorum of their own on live nodes.
func quorumWithout(voters map[uint64]string, without uint64, live map[uint64]bool) bool {
	left := 0
	for id := range voters {
		if id != without && live[replicaid.NodeOf(id)] {
			left++
		}
	}
	return left >= (len(voters)-1)/2+1
}

// AddNode registers a node that has not started yet (etcd's MemberAdd) under
// the next node ID, with its peer address and no name. A node started with
// --join and that peer address takes this ID when it joins; until then
// member list shows it with no name, as etcd shows an unstarted member.
// It runs on the meta leader.
func (s *Node) AddNode(ctx context.Context, peerURLs []string) (uint64, error) {
	raftAddr, err := onePeerAddress(peerURLs)
	if err != nil {
		return 0, err
	}
	st, err := meta.State(ctx, s.meta, true)
	if err != nil {
		return 0, router.ToGRPC(err)
	}
	highest := uint64(len(s.cfg.InitialCluster))
	for _, n := range st.Nodes {
		highest = max(highest, n.NodeId)
	}
	if meta.AddressUsed(st.Nodes, raftAddr, 0) != 0 {
		return 0, rpctypes.ErrGRPCPeerURLExist
	}
	id, err := s.meta.AllocateNodeID(ctx, highest+1)
	if err != nil {
		return 0, status.Errorf(codes.Unavailable, "tessera: allocating a node ID: %v", err)
	}
	if err := s.directory.Register(ctx, &tesserapb.NodeInfo{NodeId: id, RaftAddress: raftAddr}); err != nil {
		return 0, status.Errorf(codes.Unavailable, "tessera: registering node %d: %v", id, err)
	}
	s.log.Info("node added; it joins with --join and this peer URL", "node", id, "peer", raftAddr)
	return id, nil
}
