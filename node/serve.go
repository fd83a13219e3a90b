package node

import (
	"context"
	"net"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/internal/tlsutil"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/watchhub"
)

// What the gRPC services on the client listeners serve from the node.

// Router is the node's etcd KV and Lease front.
func (s *Node) Router() *router.Router { return s.router }

// Hub is the node's etcd Watch front.
func (s *Node) Hub() *watchhub.Hub { return s.hub }

// Internal is the node's side of the node-to-node protocol.
func (s *Node) Internal() tesserapb.InternalServer {
	return &internalService{InternalServer: s.internal, s: s}
}

// peerScheme is the scheme of the members' peer URLs: every member's is
// this one's.
func (s *Node) peerScheme() string {
	if s.cfg.PeerSecure() {
		return "https://"
	}
	return "http://"
}

// PeerSecure reports whether the members talk over peer TLS.
func (s *Node) PeerSecure() bool { return s.cfg.PeerSecure() }

// ClientTLS is the client listeners' TLS settings (--auto-tls certificates
// go in the data directory's fixtures/client).
func (s *Node) ClientTLS() tlsutil.Info { return s.cfg.ClientTLS }

// PeerListener yields the connections other nodes open to this node's peer
// port for its gRPC services (the Internal service, and the client calls
// they pass on); the Raft traffic on that port stays with the transport.
func (s *Node) PeerListener() net.Listener { return s.peerConns }

// Stopper owns every goroutine of the node; the server runs its listeners'
// serve loops as its tasks.
func (s *Node) Stopper() *stop.Stopper { return s.stopper }

// ID is this node's ID (its meta replica ID).
func (s *Node) ID() uint64 { return s.replicaID }

// ClusterID is the ID of the cluster this node belongs to.
func (s *Node) ClusterID() uint64 { return s.clusterID }

// SpaceExceeded reports whether the store is larger than
// --quota-backend-bytes.
func (s *Node) SpaceExceeded() bool { return s.spaceExceeded.Load() }

// Status answers etcd's Maintenance.Status (but its Version): Raft figures
// are the first data range's, the revision is the cluster's.
func (s *Node) Status(ctx context.Context) (*pb.StatusResponse, error) {
	leader, term, index, err := s.statusRaft()
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	var rev int64
	if current, err := s.oracle.Current(ctx); err == nil {
		rev = current
	}
	size := s.store.DiskSizeBytes()
	return &pb.StatusResponse{
		Header:           &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID, Revision: rev, RaftTerm: term},
		DbSize:           size,
		DbSizeInUse:      size,
		DbSizeQuota:      s.cfg.QuotaBackendBytes,
		Leader:           leader,
		RaftIndex:        index,
		RaftTerm:         term,
		RaftAppliedIndex: index,
		StorageVersion:   "3.7.0",
	}, nil
}

// statusRaft is what Status reports of Raft: the meta range's leader and
// term (every node holds a replica of it, and it hands out the revisions,
// so every member names the same leader) and the last index of its log
// here.
func (s *Node) statusRaft() (leader, term, index uint64, err error) {
	leader, term, _ = s.meta.Leader()
	lr, err := s.nh.GetLogReader(meta.RangeID)
	if err != nil {
		return 0, 0, 0, err
	}
	_, index = lr.GetRange()
	return leader, term, index, nil
}

// MemberList answers etcd's Cluster.MemberList from the static
// --initial-cluster and the node registry (names, client URLs and current
// peer URLs the members have published).
func (s *Node) MemberList(ctx context.Context) (*pb.MemberListResponse, error) {
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
	if !s.isJoined() {
		metaVoters := map[uint64]bool{}
		for id := range s.membersOf(meta.RangeID) {
			metaVoters[replicaid.NodeOf(id)] = true
		}
		for i, m := range s.cfg.InitialCluster {
			id := uint64(i + 1)
			if _, ok := registered[id]; !ok {
				if !metaVoters[id] {
					continue // removed (MemberRemove)
				}
			}
			member := &pb.Member{ID: id, PeerURLs: []string{m.PeerURL}}
			if n, ok := registered[id]; ok {
				// As in etcd, a member that has not published yet has no name.
				member.Name = n.Name
				member.PeerURLs = []string{s.peerScheme() + meta.PeerAddress(n)}
				member.ClientURLs = n.ClientUrls
				delete(registered, id)
			}
			resp.Members = append(resp.Members, member)
		}
	}
	// Nodes that joined (and, on a node that joined, every node).
	for _, n := range nodes {
		if _, ok := registered[n.NodeId]; ok {
			resp.Members = append(resp.Members, &pb.Member{ID: n.NodeId, Name: n.Name, PeerURLs: []string{s.peerScheme() + meta.PeerAddress(n)}, ClientURLs: n.ClientUrls})
		}
	}
	return resp, nil
}

// MetaLeader returns the meta range leader's node ID as this node knows it.
func (s *Node) MetaLeader() (uint64, bool) {
	id, _, ok := s.meta.Leader()
	return id, ok
}

// Conn is a connection to another node's client URL.
func (s *Node) Conn(ctx context.Context, nodeID uint64) (*grpc.ClientConn, error) {
	return s.directory.Conn(ctx, nodeID)
}

// hubSource is what the watch hub reads through: the store's history and
// the router's ranges and oracle.
type hubSource struct{ s *Node }

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

func (h hubSource) Header(rev int64) *pb.ResponseHeader { return h.s.header(rev) }

// header is a response header at rev for answers that no one range gives
// (watches, snapshots), with the meta range's term, as Status reports it.
func (s *Node) header(rev int64) *pb.ResponseHeader {
	h := s.router.Header(rev)
	if _, term, ok := s.meta.Leader(); ok {
		h.RaftTerm = term
	}
	return h
}

func (h hubSource) HasLeader() bool {
	_, _, ok := h.s.meta.Leader()
	return ok
}
