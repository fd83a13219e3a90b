package router

import (
	"context"
	"errors"
	"log/slog"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
	ReadAt(ctx context.Context, rev int64, fn func(*statemachine.View) (any, error)) (any, error)
	Fence(ctx context.Context, rev int64) error
	GrantLease(ctx context.Context, id, ttlSeconds int64) (*tesserapb.Result, error)
	RevokeLease(ctx context.Context, id int64) (*tesserapb.Result, error)
	RenewLease(ctx context.Context, id int64) (int64, error)
	LeaseRemaining(ctx context.Context, id int64) (int64, error)
}

// Oracle knows the global revision; the router asks it for the current
// revision once per linearizable read and per compaction.
type Oracle interface {
	// Current returns a revision at or above every revision handed out before
	// the call began.
	Current(ctx context.Context) (int64, error)
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

	cfg    Config
	rng    Range
	nodes  Nodes
	oracle Oracle
}

// New returns a router over rng, forwarding to other nodes found by nodes.
func New(cfg Config, rng Range, nodes Nodes, oracle Oracle) *Router {
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 128
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Router{cfg: cfg, rng: rng, nodes: nodes, oracle: oracle}
}

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

// readRevision is the revision a linearizable read (or a compaction) works
// at: the oracle's current revision, at or above every write acknowledged
// before the request arrived; reads take no revision of their own, so as in
// etcd they do not move it. A requested revision above it is in the future.
func (r *Router) readRevision(ctx context.Context, requested int64) (int64, error) {
	rev, err := r.oracle.Current(ctx)
	if err != nil {
		return 0, err
	}
	if requested > rev {
		return 0, rpctypes.ErrGRPCFutureRev
	}
	return rev, nil
}

// read runs fn on the range: serializable reads on the local replica as it
// is, linearizable ones at a fresh oracle revision on the range leader. It
// returns the revision read at (for the header) with fn's result.
func (r *Router) read(ctx context.Context, serializable bool, requested int64, fn func(*statemachine.View) (any, error)) (any, error) {
	if serializable {
		return r.rng.Read(ctx, false, fn)
	}
	rev, err := r.readRevision(ctx, requested)
	if err != nil {
		return nil, err
	}
	return r.rng.ReadAt(ctx, rev, fn)
}
