package router

import (
	"context"
	"errors"
	"log/slog"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/metadata"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// Range is what the router needs of a range replica on this node.
type Range interface {
	ReplicaID() uint64
	Leader() (leaderReplicaID, term uint64, ok bool)
	Write(ctx context.Context, cmd *tesserapb.Command, writesKeys bool) (*tesserapb.Result, error)
	Read(ctx context.Context, linearizable bool, fn func(*statemachine.View) (any, error)) (any, error)
	GrantLease(ctx context.Context, id, ttlSeconds int64) (*tesserapb.Result, error)
	RevokeLease(ctx context.Context, id int64) (*tesserapb.Result, error)
	RenewLease(ctx context.Context, id int64) (int64, error)
	LeaseRemaining(ctx context.Context, id int64) (int64, error)
}

// Config of the router.
type Config struct {
	ClusterID uint64
	MemberID  uint64
	// MaxRequestBytes: larger requests get "etcdserver: request is too large".
	MaxRequestBytes int
	// MaxTxnOps bounds the operations of one Txn (etcd's --max-txn-ops).
	MaxTxnOps int
	// MinLeaseTTLSeconds: shorter TTLs are raised to it, as etcd does.
	MinLeaseTTLSeconds int64
	// SpaceExceeded, when set and true, refuses writes that add data (Put,
	// Txn with a Put, LeaseGrant) with etcd's "database space exceeded".
	SpaceExceeded func() bool
	Logger        *slog.Logger
}

// Router serves etcd's KV and Lease services for one range covering the
// whole keyspace.
type Router struct {
	pb.UnimplementedKVServer
	pb.UnimplementedLeaseServer

	cfg   Config
	rng   Range
	peers *peers
}

// New returns a router over rng.
func New(cfg Config, rng Range) *Router {
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 128
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Router{cfg: cfg, rng: rng}
	r.peers = newPeers(rng)
	return r
}

// Close releases connections to other nodes.
func (r *Router) Close() { r.peers.close() }

// header returns an etcd response header at revision rev.
func (r *Router) header(rev int64) *pb.ResponseHeader {
	_, term, _ := r.rng.Leader()
	return &pb.ResponseHeader{ClusterId: r.cfg.ClusterID, MemberId: r.cfg.MemberID, Revision: rev, RaftTerm: term}
}

// forwardedKey marks a request that one node already forwarded to another, so
// a node that is not the leader either does not forward it again.
const forwardedKey = "tessera-forwarded"

func isForwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(forwardedKey)) > 0
}

// leaderToForward returns the leader's replica ID when err says this replica is
// not the leader, the leader is known, and the request was not forwarded here.
func leaderToForward(ctx context.Context, err error) (uint64, bool) {
	var nl *shard.NotLeaderError
	if !errors.As(err, &nl) || nl.LeaderReplicaID == 0 || isForwarded(ctx) {
		return 0, false
	}
	return nl.LeaderReplicaID, true
}

// noSpace reports whether the backend quota refuses data-adding writes now.
func (r *Router) noSpace() bool { return r.cfg.SpaceExceeded != nil && r.cfg.SpaceExceeded() }

// hasPut reports whether any branch of a Txn, nested ones included, puts a key.
func hasPut(ops ...[]*pb.RequestOp) bool {
	for _, branch := range ops {
		for _, op := range branch {
			switch req := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				return true
			case *pb.RequestOp_RequestTxn:
				if hasPut(req.RequestTxn.Success, req.RequestTxn.Failure) {
					return true
				}
			}
		}
	}
	return false
}
