package router

import (
	"context"
	"errors"
	"iter"
	"log/slog"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tesserakv/tessera/internal/retry"
	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// Range is what the router needs of a range replica on this node.
type Range interface {
	RangeID() uint64
	ReplicaID() uint64
	// Bounds are the range's keys [start, end) as this replica has applied
	// them; end nil is the end of the keyspace; ok false while the replica is
	// not open.
	Bounds() (start, end []byte, ok bool)
	// Generation of the bounds this replica has applied (each split raises
	// it); 0 while the replica is not open.
	Generation() uint64
	// RecordLoad counts a request routed to the range (for load-based splits).
	RecordLoad(key []byte)
	Leader() (leaderReplicaID, term uint64, ok bool)
	Write(ctx context.Context, cmd *tesserapb.Command, writesKeys bool) (*tesserapb.Result, error)
	Read(ctx context.Context, linearizable bool, fn func(*statemachine.View) (any, error)) (any, error)
	ReadAt(ctx context.Context, rev int64, fn func(*statemachine.View) (any, error)) (any, error)
	// FenceIndex is the leader's half of a read at rev served by another
	// replica: the applied index that holds every write at or below rev.
	FenceIndex(ctx context.Context, rev int64) (uint64, error)
	// ReadAfter reads at rev once this replica has applied index, what
	// the leader's FenceIndex answered for rev or a higher revision.
	ReadAfter(ctx context.Context, index uint64, rev int64, fn func(*statemachine.View) (any, error)) (any, error)
	Fence(ctx context.Context, rev int64) error
	GrantLease(ctx context.Context, id, ttlSeconds int64) (*tesserapb.Result, error)
	RevokeLease(ctx context.Context, id int64) (*tesserapb.Result, error)
	MarkLease(ctx context.Context, id int64, retryAfter time.Duration) (*tesserapb.LeaseRecord, error)
	RenewLease(ctx context.Context, id int64) (int64, error)
	LeaseRemaining(ctx context.Context, id int64) (int64, error)
}

// Oracle knows the global revision; the router asks it for the current
// revision once per linearizable read and per compaction.
type Oracle interface {
	// Current returns a revision at or above every revision handed out before
	// the call began.
	Current(ctx context.Context) (int64, error)
	// NextN returns the first of count consecutive revisions, each above
	// every revision handed out before the call (a write spanning ranges
	// takes its revision with it).
	NextN(ctx context.Context, count int64) (int64, error)
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
	// TxnRecords records the outcomes of writes spanning ranges; without it
	// they are refused.
	TxnRecords TxnRecords
	Logger     *slog.Logger
	// Stopper, when set, is the node's: the router's goroutines run on a
	// child of it. Without it the router has a stopper of its own.
	Stopper *stop.Stopper
	// Knobs are hooks for tests only.
	Knobs TestingKnobs
}

// TestingKnobs are the router's hooks for tests only: production leaves
// them zero.
type TestingKnobs struct {
	// AfterLeaseProof runs when attaching a lease to a range has proved it
	// (taken the proof revision, then read the lease on the home range),
	// before it proposes the attach.
	AfterLeaseProof func(leaseID, proof int64)
	// RevokeRetryAfter is how long after a revocation began the home range's
	// lease clock tries it again, in case it stopped part-way; 0 means 30 s.
	RevokeRetryAfter time.Duration
	// AfterLeaseMark runs when a revocation has marked the lease on the home
	// range; an error stops the revocation there.
	AfterLeaseMark func(leaseID int64) error
	// AfterTxnHeld runs when a write spanning ranges holds every range,
	// before it decides; AfterTxnRecorded when it has recorded its commit,
	// before it commits on any range; BeforeTxnCommit before it sends the
	// commit to one range, and AfterTxnCommit when that range has applied
	// it. AfterHoldDecided runs when ResolveHold has the write's outcome
	// from the meta range, before it settles the range's hold.
	AfterTxnHeld     func(txnID []byte)
	AfterTxnRecorded func(txnID []byte)
	BeforeTxnCommit  func(txnID []byte, rangeID uint64)
	AfterTxnCommit   func(txnID []byte, rangeID uint64)
	AfterHoldDecided func(txnID []byte, committed bool)
}

// Router serves etcd's KV and Lease services over the ranges of this node.
type Router struct {
	pb.UnimplementedKVServer
	pb.UnimplementedLeaseServer

	cfg    Config
	ranges *RangeCache
	nodes  Nodes
	oracle Oracle
	fences fenceCalls
	writes writeStreams // forwarded writes, one stream per node
	// contended remembers the ranges where a write spanning ranges last
	// met another's hold (contention.go).
	contended contention

	// stopper owns the router's goroutines: fence calls, the streams
	// forwarding writes to other nodes and their receivers.
	stopper *stop.Stopper
	// writeRetry is the policy writes are retried under (retry.Writes; tests
	// may shorten it).
	writeRetry retry.Policy
}

// New returns a router over the ranges in the cache, forwarding to other
// nodes found by nodes.
func New(cfg Config, ranges *RangeCache, nodes Nodes, oracle Oracle) *Router {
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 128
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	stopper := stop.ChildOf(cfg.Stopper)
	return &Router{cfg: cfg, ranges: ranges, nodes: nodes, oracle: oracle, writes: writeStreams{log: cfg.Logger, stopper: stopper}, stopper: stopper, writeRetry: retry.Writes}
}

// Stop ends the write streams other nodes opened here (RangeWriteStream),
// once the writes they carry are answered, and the router's own goroutines;
// call it before the gRPC server's graceful stop, which would otherwise wait
// for those nodes to hang up.
func (r *Router) Stop() { r.stopper.Stop() }

// header returns an etcd response header at revision rev, with the term of
// the range that answered.
func (r *Router) header(rng Range, rev int64) *pb.ResponseHeader {
	var term uint64
	if rng != nil {
		_, term, _ = rng.Leader()
	}
	return &pb.ResponseHeader{ClusterId: r.cfg.ClusterID, MemberId: r.cfg.MemberID, Revision: rev, RaftTerm: term}
}

// ErrNoRange: no local range holds a key (the node is starting, or a range
// created by a split is not started yet). Retryable.
var ErrNoRange = errors.New("router: no range holds the key yet")

// holeWait bounds how long a request waits for a range that a split has just
// made to start on this node.
const holeWait = 3 * time.Second

// rangeFor returns the range holding key, refreshing the cache and waiting
// briefly if a split has just handed the key to a range not started here yet.
func (r *Router) rangeFor(key []byte) (Range, error) {
	var found Range
	err := r.untilCovered(func() bool {
		found = r.ranges.lookup(key)
		return found != nil
	})
	return found, err
}

// spansOf returns the ranges holding etcd's interval [key, rangeEnd), as
// rangeFor does for one key.
func (r *Router) spansOf(key, rangeEnd []byte) ([]span, error) {
	var spans []span
	err := r.untilCovered(func() bool {
		var ok bool
		spans, ok = r.ranges.overlapping(key, rangeEnd)
		return ok
	})
	return spans, err
}

func (r *Router) untilCovered(covered func() bool) error {
	if covered() {
		return nil
	}
	deadline := time.Now().Add(holeWait)
	for {
		r.ranges.Refresh()
		if covered() {
			return nil
		}
		if time.Now().After(deadline) {
			return ErrNoRange
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// home is the range holding the lowest keys, which never changes ID (a split
// keeps the left part): it keeps the lease clocks.
func (r *Router) home() (Range, error) { return r.rangeFor(nil) }

// forwardedKey marks a request that nodes forwarded to one another, with
// the number of times (forwardHops), so that it is not passed on forever.
const forwardedKey = "tessera-forwarded"

// isForwarded reports whether the request in ctx may not be forwarded again.
func isForwarded(ctx context.Context) bool { return forwardHops(ctx) >= maxForwardHops }

// leaderToForward returns the leader's replica ID when err says this replica is
// not the leader, the leader is known, and the request was not forwarded here.
func leaderToForward(ctx context.Context, err error) (uint64, bool) {
	if isForwarded(ctx) {
		return 0, false
	}
	return leaderOf(err)
}

// leaderOf returns the leader's replica (= node) ID when err says this
// replica is not the leader and the leader is known.
func leaderOf(err error) (uint64, bool) {
	var nl *shard.NotLeaderError
	if !errors.As(err, &nl) || nl.LeaderReplicaID == 0 {
		return 0, false
	}
	return nl.LeaderReplicaID, true
}

// noSpace reports whether the backend quota refuses data-adding writes now.
func (r *Router) noSpace() bool { return r.cfg.SpaceExceeded != nil && r.cfg.SpaceExceeded() }

// hasPut reports whether any branch of a Txn, nested ones included, puts a key.
func hasPut(ops ...[]*pb.RequestOp) bool {
	for range txnPuts(ops...) {
		return true
	}
	return false
}

// txnPuts yields the Puts of Txn branches, those of nested Txns included.
func txnPuts(ops ...[]*pb.RequestOp) iter.Seq[*pb.PutRequest] {
	return func(yield func(*pb.PutRequest) bool) {
		for _, branch := range ops {
			for _, op := range branch {
				switch req := op.Request.(type) {
				case *pb.RequestOp_RequestPut:
					if !yield(req.RequestPut) {
						return
					}
				case *pb.RequestOp_RequestTxn:
					for put := range txnPuts(req.RequestTxn.Success, req.RequestTxn.Failure) {
						if !yield(put) {
							return
						}
					}
				}
			}
		}
	}
}

// Header returns a response header at rev, for the Watch service.
func (r *Router) Header(rev int64) *pb.ResponseHeader { return r.header(nil, rev) }

// CurrentRevision returns the highest revision the oracle has issued.
func (r *Router) CurrentRevision(ctx context.Context) (int64, error) { return r.oracle.Current(ctx) }

// RangesOf returns the IDs of the ranges holding keys of etcd's interval
// [key, rangeEnd), in key order, without waiting; ok is false while part of
// it has no range.
func (r *Router) RangesOf(key, rangeEnd []byte) (ids []uint64, ok bool) {
	parts, ok := r.PartsOf(key, rangeEnd)
	if !ok {
		return nil, false
	}
	ids = make([]uint64, len(parts))
	for i, p := range parts {
		ids[i] = p.RangeID
	}
	return ids, true
}

// CloseRange makes this node's replica of a range hold every write at or
// below a revision at least as high as every revision issued before the
// call, and returns that revision (0 when the replica's published floor
// carries it). That is a fenced read at the oracle's current revision (no
// Raft write): on this replica when it leads the range, otherwise here once
// it has applied what the leader's FenceRange answered. The fence makes every
// later write take a higher revision. When the leader cannot be asked, the
// range's leader applies a barrier carrying a new revision, which lifts the
// replica's floor when it applies it.
func (r *Router) CloseRange(ctx context.Context, rangeID uint64) (int64, error) {
	rng := r.ranges.byID(rangeID)
	if rng == nil {
		return 0, ErrNoRange
	}
	noop := func(int64) func(*statemachine.View) (any, error) {
		return func(*statemachine.View) (any, error) { return nil, nil }
	}
	if _, rev, err := r.readAt(ctx, rng, 0, noop); err == nil {
		return rev, nil
	}
	_, err := r.writeTo(ctx, rng, &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{}}}, true, 0)
	return 0, err
}
