package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// maxRouteAttempts bounds the retries of a request that met a stale range
// cache (a split).
const maxRouteAttempts = 5

// replicaGone reports whether err is a local replica that stopped before
// the write was proposed, or whose state machine is closed to reads, while
// this node goes on (the replica was removed from its range): the range is
// elsewhere now.
func (r *Router) replicaGone(err error) bool {
	if !errors.Is(err, shard.ErrStoppedUnproposed) && !errors.Is(err, statemachine.ErrUnavailable) {
		return false
	}
	select {
	case <-r.stopper.ShouldQuiesce():
		return false
	default:
		return true
	}
}

// reroute reports whether a request that failed with err should be routed
// again: a range answered that its bounds no longer hold the request's keys
// (a split the cache has not caught up with), or a replica here stopped
// before it proposed the request (replicaGone). It refreshes the cache and,
// after the first retry, pauses a little longer each time, so a split still
// being applied has time to finish.
func (r *Router) reroute(ctx context.Context, err error, attempt int) bool {
	if !errors.Is(err, statemachine.ErrWrongRange) && !r.replicaGone(err) || attempt >= maxRouteAttempts {
		return false
	}
	if attempt > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
	r.ranges.Refresh()
	return true
}

// writeTo proposes cmd to rng on its leader: here when this replica leads,
// otherwise through Internal.RangeWriteStream to the leader's node. fenceRev,
// when positive, is raised on the leader's fence first (compaction).
//
// This is the one place a write is tried again (retry.Writes): while the
// range has no leader ready (an election, a leadership barrier being redone,
// Raft busy: shard.RetryableError here, FailedPrecondition from the node
// asked), while the node named as leader names another, and while the
// leader's node cannot be reached (the write never left). A write whose
// outcome is unknown is never tried again.
func (r *Router) writeTo(ctx context.Context, rng Range, cmd *tesserapb.Command, writesKeys bool, fenceRev int64) (*tesserapb.Result, error) {
	var (
		res  *tesserapb.Result
		hint uint64 // the leader another node named, if any
		body []byte // cmd encoded, once, for forwarding
	)
	err := r.writeRetry.Do(ctx, r.stopper.ShouldQuiesce(), func() (again bool, err error) {
		res = nil
		leader := hint
		hint = 0
		if leader == 0 || leader == rng.ReplicaID() {
			if fenceRev > 0 {
				err = rng.Fence(ctx, fenceRev)
			}
			if err == nil {
				res, err = rng.Write(ctx, cmd, writesKeys)
			}
			// rangeWrite never forwards again, so even a request that was
			// itself forwarded here may forward a write for a range led
			// elsewhere.
			var forwardable bool
			if leader, forwardable = leaderOf(err); !forwardable {
				return shard.IsRetryable(err), err
			}
		}
		notLeaderHere := err
		cc, cerr := r.nodes.Conn(ctx, leader)
		if cerr != nil {
			// The leader's address is not known here yet (the node
			// registry's own leader may be moving): ask again.
			r.cfg.Logger.Debug("no connection to the range leader", "range", rng.RangeID(), "leader", leader, "err", cerr)
			if notLeaderHere == nil {
				notLeaderHere = &shard.NotLeaderError{LeaderReplicaID: leader}
			}
			return true, notLeaderHere
		}
		if body == nil {
			if body, err = proto.Marshal(cmd); err != nil {
				return false, err
			}
		}
		resp, ferr := r.writes.call(ctx, cc, &tesserapb.RangeWriteRequest{
			RangeId: rng.RangeID(), Command: body, WritesKeys: writesKeys, FenceRevision: fenceRev,
		})
		if m, ok := rng.(*remoteRange); ok {
			m.noteLeader(leader, ferr == nil)
		}
		switch {
		case ferr == nil:
			res = resp.Result
			return false, statemachine.ErrorFromResult(resp.Result)
		case neverSent(ferr):
			// The leader's node is down (stopped, restarting): the request
			// never left, so asking again is safe; the replicas here elect or
			// learn a new leader meanwhile (woken, if idle ranges quiesced).
			wake(rng)
			return true, ferr
		case status.Code(ferr) == codes.FailedPrecondition:
			// The node asked does not lead, or is not ready to: try where it
			// says the leader is (this node's own view can lag).
			if h := leaderHint(ferr); h != leader {
				hint = h
			}
			return true, ferr
		}
		return false, ferr
	})
	if err != nil && (status.Code(err) == codes.FailedPrecondition || neverSent(err)) {
		// The nodes kept naming leaders that were not (yet) ready, or the
		// leader's node stayed unreachable: to the client that is etcd's
		// "no leader", which it retries.
		return nil, noLeader(err)
	}
	return res, err
}

// noLeader is a forwarded request's failure as the client sees it: etcd's
// "no leader", which clients retry, with the cause after it.
func noLeader(err error) error {
	return fmt.Errorf("%w: %v", shard.ErrNoLeader, status.Convert(err).Message())
}

// unreachableAsNoLeader is err, or noLeader(err) when no replica's node could
// be reached (none answered, and the request's own deadline has not passed):
// the client gets etcd's "no leader", not a peer's dial error.
func unreachableAsNoLeader(ctx context.Context, err error) error {
	if ctx.Err() == nil && (neverSent(err) || status.Code(err) == codes.Unavailable) {
		return noLeader(err)
	}
	return err
}

// retryLocal runs a write on a local replica under the same policy as
// writeTo: again while it fails with a shard.RetryableError, or while the
// replica knows no leader (an election under way). Any other error, a
// replica naming another leader among them, is returned.
func (r *Router) retryLocal(ctx context.Context, write func() error) error {
	return r.writeRetry.Do(ctx, r.stopper.ShouldQuiesce(), func() (bool, error) {
		err := write()
		var nl *shard.NotLeaderError
		return shard.IsRetryable(err) || (errors.As(err, &nl) && nl.LeaderReplicaID == 0), err
	})
}

// ProposeTo proposes a command that takes no revision (a split, a barrier)
// to a range on its leader, wherever that is.
func (r *Router) ProposeTo(ctx context.Context, rng Range, cmd *tesserapb.Command) (*tesserapb.Result, error) {
	return r.writeTo(ctx, rng, cmd, false, 0)
}

// rangeWrite serves one write another node forwarded on its
// RangeWriteStream to the range leader here.
func (r *Router) rangeWrite(ctx context.Context, req *tesserapb.RangeWriteRequest) (*tesserapb.RangeWriteResponse, error) {
	rng := r.ranges.byID(req.RangeId)
	if rng == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: range %d is not on this node", req.RangeId)
	}
	cmd := &tesserapb.Command{}
	if err := proto.Unmarshal(req.Command, cmd); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: bad command: %v", err)
	}
	var err error
	if req.FenceRevision > 0 {
		err = rng.Fence(ctx, req.FenceRevision)
	}
	var res *tesserapb.Result
	if err == nil {
		res, err = rng.Write(ctx, cmd, req.WritesKeys)
	}
	if res != nil {
		// A state machine's answer, error or not, goes back as it is.
		return &tesserapb.RangeWriteResponse{Result: res}, nil
	}
	var nl *shard.NotLeaderError
	switch {
	case errors.As(err, &nl) && nl.LeaderReplicaID != 0:
		return nil, notLeaderStatus(nl.LeaderReplicaID, err)
	case errors.As(err, &nl), errors.Is(err, shard.ErrNoLeader), shard.IsRetryable(err):
		// Not ready to lead: the sender tries again, at the leader this
		// replica knows, if any.
		leader, _, _ := rng.Leader()
		return nil, notLeaderStatus(leader, err)
	}
	return nil, ToGRPC(err)
}

// notLeaderStatus is the FailedPrecondition a node answers a forwarded write
// with when its replica does not lead or is not ready to (the write was not
// applied): err's text, and the leader it knows (0: none) as a
// tesserapb.NotLeader detail.
func notLeaderStatus(leader uint64, err error) error {
	return withNotLeader(status.New(codes.FailedPrecondition, err.Error()), &tesserapb.NotLeader{LeaderReplicaId: leader}).Err()
}

// withNotLeader is st with nl as a detail (st itself when nl is nil).
func withNotLeader(st *status.Status, nl *tesserapb.NotLeader) *status.Status {
	if nl == nil {
		return st
	}
	if with, err := st.WithDetails(nl); err == nil {
		return with
	}
	return st
}

// notLeaderOf is st's NotLeader detail, or nil.
func notLeaderOf(st *status.Status) *tesserapb.NotLeader {
	for _, d := range st.Details() {
		if nl, ok := d.(*tesserapb.NotLeader); ok {
			return nl
		}
	}
	return nil
}

// txnOn proposes a checked TxnRequest to the one range that holds all its
// keys, retrying when a split moved keys to another range meanwhile.
func (r *Router) txnOn(ctx context.Context, req *pb.TxnRequest) (Range, *pb.TxnResponse, error) {
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	if r.cfg.MaxRequestBytes > 0 && len(body) > r.cfg.MaxRequestBytes {
		return nil, nil, rpctypes.ErrGRPCRequestTooLarge
	}
	if r.noSpace() && hasPut(req.Success, req.Failure) {
		return nil, nil, rpctypes.ErrGRPCNoSpace
	}
	cmd := &tesserapb.Command{Op: &tesserapb.Command_Txn{Txn: &tesserapb.TxnCommand{Request: body}}}
	attaches := 0
	missingLeases := false // the last proof found a lease named that does not exist
	for attempt := 0; ; attempt++ {
		intervals := txnIntervals(req)
		rng, err := r.singleRange(intervals)
		if errors.Is(err, errSpansRanges) {
			resp, err := r.spanningTxn(ctx, req)
			if err != nil {
				return nil, nil, err
			}
			resp.Header = r.header(nil, resp.GetHeader().GetRevision())
			return nil, resp, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if attempt == 0 && len(intervals) > 0 {
			rng.RecordLoad(intervals[0][0])
		}
		res, err := r.writeTo(ctx, rng, cmd, true, 0)
		if r.reroute(ctx, err, attempt) {
			continue
		}
		retryAttach := errors.Is(err, statemachine.ErrLeaseProofOld) ||
			errors.Is(err, statemachine.ErrLeaseNotFound) && !(attaches > 0 && missingLeases)
		if retryAttach && attaches < maxLeaseAttaches {
			// The range may not know the lease yet (or refused the
			// proof of an earlier round): prove the lease on the home
			// range and write again, giving the range its record. A
			// refusal after a proof that found a named lease missing is
			// that lease's: the answer.
			attaches++
			var attach []*tesserapb.LeaseAttach
			if attach, missingLeases, err = r.proveLeases(ctx, rng, req); err == nil {
				cmd = &tesserapb.Command{Op: &tesserapb.Command_Txn{Txn: &tesserapb.TxnCommand{Request: body, Attach: attach}}}
				continue
			}
		}
		if err != nil {
			return rng, nil, err
		}
		resp := &pb.TxnResponse{}
		if err := proto.Unmarshal(res.Response, resp); err != nil {
			return rng, nil, fmt.Errorf("router: decoding txn response: %w", err)
		}
		resp.Header = r.header(rng, resp.GetHeader().GetRevision())
		return rng, resp, nil
	}
}

// errSpansRanges: a write's keys lie in several ranges (spanningTxn).
var errSpansRanges = errors.New("router: the write spans ranges")

// singleRange returns the one range holding every interval, or
// errSpansRanges when they are several.
func (r *Router) singleRange(intervals [][2][]byte) (Range, error) {
	var (
		ranges []Range
		err    error
	)
	for attempt := 0; attempt < 2; attempt++ {
		if ranges, err = r.rangesOfIntervals(intervals); err != nil || len(ranges) <= 1 {
			break
		}
		// The lookups may have straddled a rebuild of the cache (a split's
		// child opening here), placing keys of one range in two: look
		// again before refusing.
		r.ranges.Refresh()
	}
	switch {
	case err != nil:
		return nil, err
	case len(ranges) > 1:
		return nil, errSpansRanges
	case len(ranges) == 0:
		// A Txn with no keys at all (etcd allows it): any range answers.
		return r.home()
	}
	return ranges[0], nil
}

// rangesOfIntervals returns the ranges holding the intervals, in key order.
// Repeated intervals (a Txn comparing, writing and reading one key) are
// looked up once.
func (r *Router) rangesOfIntervals(intervals [][2][]byte) ([]Range, error) {
	var ranges []Range
	starts := map[uint64][]byte{} // of the ranges found, by ID
	// An empty interval holds no key, so it touches no range — unless every
	// interval is empty, and then the range of the first key answers.
	if slices.ContainsFunc(intervals, func(iv [2][]byte) bool { return !emptyInterval(iv) }) {
		intervals = slices.DeleteFunc(slices.Clone(intervals), emptyInterval)
	} else if len(intervals) > 0 {
		intervals = [][2][]byte{{intervals[0][0], nil}}
	}
	for i, iv := range intervals {
		if slices.ContainsFunc(intervals[:i], func(o [2][]byte) bool {
			return bytes.Equal(o[0], iv[0]) && bytes.Equal(o[1], iv[1])
		}) {
			continue
		}
		spans, err := r.spansOf(iv[0], iv[1])
		if err != nil {
			return nil, err
		}
		for _, sp := range spans {
			if _, seen := starts[sp.rng.RangeID()]; !seen {
				starts[sp.rng.RangeID()] = sp.rangeStart
				ranges = append(ranges, sp.rng)
			}
		}
	}
	slices.SortFunc(ranges, func(a, b Range) int { return bytes.Compare(starts[a.RangeID()], starts[b.RangeID()]) })
	return ranges, nil
}

// emptyInterval reports whether an interval in etcd's form is [key, end)
// with end at or before key: no key at all.
func emptyInterval(iv [2][]byte) bool {
	end := iv[1]
	return len(end) > 0 && !(len(end) == 1 && end[0] == 0) && bytes.Compare(end, iv[0]) <= 0
}

// txnIntervals lists every key interval a Txn reads or writes, in etcd's
// form (end nil for one key), nested Txns included.
func txnIntervals(req *pb.TxnRequest) [][2][]byte {
	var out [][2][]byte
	for _, c := range req.Compare {
		out = append(out, [2][]byte{c.Key, c.RangeEnd})
	}
	for _, branch := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				out = append(out, [2][]byte{o.RequestRange.Key, o.RequestRange.RangeEnd})
			case *pb.RequestOp_RequestPut:
				out = append(out, [2][]byte{o.RequestPut.Key, nil})
			case *pb.RequestOp_RequestDeleteRange:
				out = append(out, [2][]byte{o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd})
			case *pb.RequestOp_RequestTxn:
				out = append(out, txnIntervals(o.RequestTxn)...)
			}
		}
	}
	return out
}

// leaderHint returns the replica a forwarded write's refusal names as the
// leader (its tesserapb.NotLeader detail), or 0.
func leaderHint(err error) uint64 {
	return notLeaderOf(status.Convert(err)).GetLeaderReplicaId()
}

// DialFailed reports whether a unary call to another node failed because
// no connection to it could be made, so nothing was sent (gRPC's
// "transport: Error while dialing"); a call sent on a connection that broke
// fails Unavailable too, but may have been carried out.
func DialFailed(err error) bool {
	st := status.Convert(err)
	return st.Code() == codes.Unavailable && strings.Contains(st.Message(), "Error while dialing")
}

// notSentError is a forwarded write that never left this node: the stream
// to the leader's node could not be opened, so asking again is safe.
type notSentError struct{ st *status.Status }

func (e *notSentError) Error() string              { return e.st.Err().Error() }
func (e *notSentError) GRPCStatus() *status.Status { return e.st }

// neverSent reports whether a forwarded write failed before it was sent. A
// write on a stream that broke is not: it may have been applied.
// wake takes this node's replica of a range out of quiescence after the
// node of the leader it knows could not be reached (shard.Replica.Wake); a
// range held elsewhere, or none, is left alone.
func wake(rng Range) {
	if w, ok := rng.(interface{ Wake() }); ok {
		w.Wake()
	}
}

func neverSent(err error) bool {
	var ns *notSentError
	return errors.As(err, &ns)
}
