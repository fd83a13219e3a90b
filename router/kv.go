package router

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// Range serves etcd's KV.Range over one or many ranges. A linearizable read
// takes the oracle's current revision R once, reads every range it touches at
// R on that range's leader, and answers with header revision R; a
// serializable one reads the local replicas as they are.
func (r *Router) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(req); err != nil {
		return nil, err
	}
	ans, err := r.rangeAll(ctx, req, false)
	if err != nil {
		return nil, ToGRPC(err)
	}
	sendSerialStates(ctx, ans.reads)
	return ans.resp, nil
}

// RangeWire is Range for a gRPC server whose codec sends wire-format
// messages as they are (wirecodec.Codec): the answer to a request that
// statemachine.WireRangeable accepts is built from the stored versions
// without decoding them (a *WireRangeResponse); any other is Range's.
func (r *Router) RangeWire(ctx context.Context, req *pb.RangeRequest) (proto.Message, error) {
	if err := checkRange(req); err != nil {
		return nil, err
	}
	ans, err := r.rangeAll(ctx, req, statemachine.WireRangeable(req))
	if err != nil {
		return nil, ToGRPC(err)
	}
	sendSerialStates(ctx, ans.reads)
	if ans.wire != nil {
		return ans.wire, nil
	}
	return ans.resp, nil
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
		return 0, statemachine.ErrFutureRev
	}
	return rev, nil
}

// rangeAnswer is one range's part of a Range, or the whole answer: resp, or
// with wire set (statemachine.WireRangeable requests only) the same in wire
// format. A serializable read's answer has its parts' reads (serial.go).
type rangeAnswer struct {
	resp  *pb.RangeResponse
	wire  *WireRangeResponse
	reads []spanRead
}

func (a rangeAnswer) more() bool {
	if a.wire != nil {
		return a.wire.More
	}
	return a.resp.More
}

func (a rangeAnswer) kvs() int {
	if a.wire != nil {
		return a.wire.KVs.Len()
	}
	return len(a.resp.Kvs)
}

// add merges one range's answer into a whole one: its count, more, and
// (withKVs) its kvs after the ones already there.
func (a rangeAnswer) add(part rangeAnswer, withKVs, more bool) {
	if a.wire != nil {
		a.wire.Count += part.wire.Count
		a.wire.More = more
		if withKVs {
			a.wire.KVs.Append(&part.wire.KVs)
		}
		return
	}
	a.resp.Count += part.resp.Count
	a.resp.More = more
	if withKVs {
		a.resp.Kvs = append(a.resp.Kvs, part.resp.Kvs...)
	}
}

// rangeAll runs a Range over every range it touches and merges the answers
// as one store would give them, in wire format when wire is set. A
// linearizable read of one range at the current revision leaves taking the
// revision to readAt (on a follower, the range leader takes it while
// fencing); a read of several ranges takes it here, once, for all of them.
// A serializable read of several ranges at the current revision reads again
// the ranges that showed part of a write spanning ranges (serial.go).
func (r *Router) rangeAll(ctx context.Context, req *pb.RangeRequest, wire bool) (rangeAnswer, error) {
	var headerRev int64
	sub := proto.CloneOf(req)
	for attempt := 0; ; attempt++ {
		spans, err := r.spansOf(req.Key, req.RangeEnd)
		if err != nil {
			return rangeAnswer{}, err
		}
		if !req.Serializable && headerRev == 0 && (req.Revision != 0 || len(spans) > 1) {
			rev, err := r.readRevision(ctx, req.Revision)
			if err != nil {
				return rangeAnswer{}, err
			}
			headerRev = rev
			if sub.Revision == 0 {
				sub.Revision = rev
			}
		}
		serial := req.Serializable && req.Revision == 0 && len(spans) > 1
		// A node reading one range for another's serializable read of
		// several sends its replica's state back.
		states := serial || (req.Serializable && req.Revision == 0 && serialStateAsked(ctx))
		ans, err := r.mergeSpans(ctx, sub, spans, headerRev, wire, serialRead{states: states})
		if err == nil && serial {
			if pins, again := serialPinsOf(ans.reads); again {
				ans, err = r.mergeSpans(ctx, sub, spans, 0, wire, serialRead{pins: pins})
			}
		}
		if r.readAgain(ctx, err, attempt, serial) {
			continue
		}
		return ans, err
	}
}

// ordered reports whether a Range's result is in key order (ascending or
// descending), so ranges can be read one after another with the limit.
func ordered(req *pb.RangeRequest) (ok, descending bool) {
	// Any other target sorts by it (NONE meaning ascending), as one store does.
	if req.SortTarget != pb.RangeRequest_KEY {
		return false, false
	}
	return true, req.SortOrder == pb.RangeRequest_DESCEND
}

// mergeSpans reads spans one after another in key order and merges their
// answers; sr says what a serializable read of several ranges needs.
func (r *Router) mergeSpans(ctx context.Context, req *pb.RangeRequest, spans []span, headerRev int64, wire bool, sr serialRead) (rangeAnswer, error) {
	out := rangeAnswer{resp: &pb.RangeResponse{}}
	if wire {
		out = rangeAnswer{wire: &WireRangeResponse{}}
	}
	inKeyOrder, descending := ordered(req)
	if !inKeyOrder && len(spans) > 1 {
		return r.mergeSorted(ctx, req, spans, headerRev, sr)
	}
	if descending {
		spans = slices.Clone(spans)
		slices.Reverse(spans)
	}
	var localRev int64
	for _, sp := range spans {
		sp.rng.RecordLoad(sp.key)
		sub := proto.CloneOf(req)
		sub.Key, sub.RangeEnd = sp.key, sp.end
		// In key order, ranges after the limit is filled only count. (A
		// request sorted by another target reads one range here, as it is.)
		have := int64(out.kvs())
		filled := inKeyOrder && req.Limit > 0 && have >= req.Limit
		switch {
		case !inKeyOrder:
		case filled:
			sub.Limit = 1 // only to learn the count, and whether more match
		case req.Limit > 0:
			sub.Limit = req.Limit - have
		}
		ans, rev, err := r.readSpanPinned(ctx, sp, sub, wire, sr)
		if err != nil {
			return rangeAnswer{}, err
		}
		localRev = max(localRev, rev)
		out.reads = append(out.reads, ans.reads...)
		more := out.more() || ans.more()
		if filled {
			more = out.more() || ans.kvs() > 0
		}
		out.add(ans, !filled, more)
	}
	if headerRev == 0 {
		headerRev = localRev
	}
	var first Range
	if len(spans) > 0 {
		first = spans[0].rng
	}
	if out.wire != nil {
		out.wire.Header = r.header(first, headerRev)
		return out, nil
	}
	if req.CountOnly {
		out.resp.Kvs, out.resp.More = nil, false
	}
	out.resp.Header = r.header(first, headerRev)
	return out, nil
}

// mergeSorted answers a Range sorted by a target other than the key, over
// several ranges, as etcd's one store does (server/etcdserver/txn/range.go):
// it gathers the keys in key order up to the store's limit
// (statemachine.StoreLimit: with sort order NONE, a limit and no revision
// filters, only the first limit+1; otherwise every key that passes the
// filters), sorts them and cuts to the limit. Keys only answers sorted by
// value are read with their values (and leases, as etcd's are), which go
// after the sort.
func (r *Router) mergeSorted(ctx context.Context, req *pb.RangeRequest, spans []span, headerRev int64, sr serialRead) (rangeAnswer, error) {
	storeLimit := statemachine.StoreLimit(req)
	read := proto.CloneOf(req)
	read.SortOrder, read.SortTarget, read.Limit = pb.RangeRequest_NONE, pb.RangeRequest_KEY, 0
	read.KeysOnly = req.KeysOnly && req.SortTarget != pb.RangeRequest_VALUE
	out := &pb.RangeResponse{}
	var (
		localRev int64
		reads    []spanRead
	)
	for _, sp := range spans {
		sp.rng.RecordLoad(sp.key)
		sub := proto.CloneOf(read)
		sub.Key, sub.RangeEnd = sp.key, sp.end
		if storeLimit > 0 {
			if want := storeLimit - int64(len(out.Kvs)); want > 0 {
				sub.Limit = want
			} else {
				sub.CountOnly = true
			}
		}
		ans, rev, err := r.readSpanPinned(ctx, sp, sub, false, sr)
		if err != nil {
			return rangeAnswer{}, err
		}
		localRev = max(localRev, rev)
		reads = append(reads, ans.reads...)
		out.Count += ans.resp.Count
		out.Kvs = append(out.Kvs, ans.resp.Kvs...)
	}
	statemachine.SortKVs(out.Kvs, req)
	if req.Limit > 0 && int64(len(out.Kvs)) > req.Limit {
		out.Kvs, out.More = out.Kvs[:req.Limit], true
	}
	if req.KeysOnly && !read.KeysOnly {
		for _, kv := range out.Kvs {
			kv.Value = nil
		}
	}
	if headerRev == 0 {
		headerRev = localRev
	}
	out.Header = r.header(spans[0].rng, headerRev)
	return rangeAnswer{resp: out, reads: reads}, nil
}

// readSpanPinned is readSpan of sp's part, with its replica's state when
// sr asks, or at its pin when sr has pins (a serializable read of several
// ranges read again), which is then the revision the answer is good for.
func (r *Router) readSpanPinned(ctx context.Context, sp span, req *pb.RangeRequest, wire bool, sr serialRead) (rangeAnswer, int64, error) {
	var pin int64
	if sr.pins != nil {
		var ok bool
		if pin, ok = sr.pins.at(sp.key); !ok {
			return rangeAnswer{}, 0, fmt.Errorf("%w: no revision for the part from %q", errSerialAgain, sp.key)
		}
		req = proto.CloneOf(req)
		req.Revision = pin
	}
	ans, rev, err := r.readSpan(ctx, sp.rng, req, wire, sr.states)
	if err != nil {
		return ans, rev, err
	}
	if pin != 0 {
		rev = pin
	}
	for i := range ans.reads {
		ans.reads[i].key, ans.reads[i].end = sp.key, sp.end
	}
	return ans, rev, nil
}

// readSpan reads one range's part of a Range (in wire format when wire is
// set): locally as it is for a serializable read, otherwise at req.Revision
// (0: the current revision) after the range leader's fence (here, or through
// FenceRange or KV.Range on the leader's node). It returns the revision the
// answer is good for; with states, a serializable read's answer has the
// replica's SerialReadState (serial.go).
func (r *Router) readSpan(ctx context.Context, rng Range, req *pb.RangeRequest, wire, states bool) (rangeAnswer, int64, error) {
	if m, ok := rng.(*remoteRange); ok {
		var (
			resp *pb.RangeResponse
			md   metadata.MD
		)
		err := r.onReplica(ctx, m, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			resp, md, err = rangeOn(ctx, cc, req, states)
			return err
		})
		if err != nil {
			return rangeAnswer{}, 0, unreachableAsNoLeader(ctx, err)
		}
		return relayedAnswer(rng.RangeID(), req, resp, md, wire, states)
	}
	type viewAnswer struct {
		ans rangeAnswer
		rev int64
	}
	rangeID := rng.RangeID()
	read := func(rev int64) func(*statemachine.View) (any, error) {
		return func(v *statemachine.View) (any, error) {
			at := req
			if rev != req.Revision {
				at = proto.CloneOf(req)
				at.Revision = rev
			}
			var ans rangeAnswer
			var err error
			if wire {
				var w *statemachine.WireRange
				w, err = v.RangeWire(at)
				if err == nil {
					ans.wire = &WireRangeResponse{KVs: w.KVs, Count: w.Count, More: w.More}
				}
			} else {
				ans.resp, err = v.Range(at)
			}
			if err != nil {
				return nil, err
			}
			if states {
				ans.reads = []spanRead{{state: viewSerialState(rangeID, v)}}
			}
			return viewAnswer{ans, v.Revision()}, nil
		}
	}
	// A read forwarded to the leader's node that cannot serve it (the node
	// is down, or lost its leadership) is tried again, under the write
	// retry policy, as this replica learns the new leader: reads are
	// idempotent.
	var (
		ans  rangeAnswer
		rev  int64
		last error // the forwarded call's failure
	)
	err := r.writeRetry.Do(ctx, r.stopper.ShouldQuiesce(), func() (bool, error) {
		var out any
		var err error
		if req.Serializable {
			out, err = rng.Read(ctx, false, read(req.Revision))
		} else {
			out, rev, err = r.readAt(ctx, rng, req.Revision, read)
		}
		if err == nil {
			va := out.(viewAnswer)
			ans = va.ans
			if req.Serializable {
				rev = va.rev
			}
			return false, nil
		}
		var md metadata.MD
		resp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (resp *pb.RangeResponse, err error) {
			resp, md, err = rangeOn(ctx, cc, req, states)
			return resp, err
		})
		if !ok {
			return false, err
		}
		if ferr == nil {
			ans, rev, err = relayedAnswer(rangeID, req, resp, md, wire, states)
			return false, err
		}
		if status.Code(ferr) != codes.Unavailable || ctx.Err() != nil {
			return false, ferr
		}
		wake(rng)
		last = ferr
		return true, ferr
	})
	if err != nil && last != nil && err == last {
		// The leader's node stayed out of reach: to the client that is
		// etcd's "no leader", which it retries, not a peer's dial error.
		return rangeAnswer{}, 0, noLeader(err)
	}
	return ans, rev, err
}

// rangeOn sends one range's part of a Range to another node, with states
// asking for the replica's state too (serial.go).
func rangeOn(ctx context.Context, cc *grpc.ClientConn, req *pb.RangeRequest, states bool) (*pb.RangeResponse, metadata.MD, error) {
	if !states {
		resp, err := pb.NewKVClient(cc).Range(ctx, req)
		return resp, nil, err
	}
	ctx, opt, md := askSerialState(ctx)
	resp, err := pb.NewKVClient(cc).Range(ctx, req, opt)
	return resp, *md, err
}

// relayedAnswer is another node's answer to one part of a Range of range
// rangeID as readSpan returns it, with the revision it is good for; md is
// the answer's header, which has the replica's state when states asked.
func relayedAnswer(rangeID uint64, req *pb.RangeRequest, resp *pb.RangeResponse, md metadata.MD, wire, states bool) (rangeAnswer, int64, error) {
	rev := req.Revision
	if rev == 0 {
		rev = resp.GetHeader().GetRevision()
	}
	ans := rangeAnswer{resp: resp}
	if states {
		state, err := relayedSerialState(rangeID, md)
		if err != nil {
			return rangeAnswer{}, 0, err
		}
		ans.reads = []spanRead{{state: state}}
	}
	if !wire {
		return ans, rev, nil
	}
	w := &WireRangeResponse{Count: resp.Count, More: resp.More}
	for _, kv := range resp.Kvs {
		w.KVs.AddKV(kv)
	}
	return rangeAnswer{wire: w, reads: ans.reads}, rev, nil
}

// Put serves KV.Put as a one-operation Txn on the range holding the key.
func (r *Router) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(req); err != nil {
		return nil, err
	}
	_, resp, err := r.txnOn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: req}}}})
	if err != nil {
		return nil, ToGRPC(err)
	}
	put := resp.Responses[0].GetResponsePut()
	put.Header = resp.Header
	return put, nil
}

// DeleteRange serves KV.DeleteRange as a one-operation Txn; a delete spanning
// ranges is refused (no multi-range atomic writes yet).
func (r *Router) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(req); err != nil {
		return nil, err
	}
	_, resp, err := r.txnOn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: req}}}})
	if err != nil {
		return nil, ToGRPC(err)
	}
	del := resp.Responses[0].GetResponseDeleteRange()
	del.Header = resp.Header
	return del, nil
}

// Txn serves KV.Txn on the one range holding all its keys.
func (r *Router) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(req, r.cfg.MaxTxnOps); err != nil {
		return nil, err
	}
	_, resp, err := r.txnOn(ctx, req)
	if err != nil {
		return nil, ToGRPC(err)
	}
	return resp, nil
}

// Compact serves KV.Compact: every range applies the compaction before it is
// answered. A revision above the oracle's current one is in the future; each
// range leader raises its fence to the compaction revision before proposing
// it, so no write at or below it can reach the range afterwards.
func (r *Router) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	current, err := r.readRevision(ctx, req.Revision)
	if err != nil {
		return nil, ToGRPC(err)
	}
	cmd := &tesserapb.Command{Op: &tesserapb.Command_Compact{Compact: &tesserapb.CompactCommand{Revision: req.Revision}}}
	var firstErr error
	compacted := 0
	ranges := r.ranges.list()
	for _, rng := range ranges {
		_, err := r.writeTo(ctx, rng, cmd, false, req.Revision)
		switch {
		case errors.Is(err, statemachine.ErrCompacted):
			compacted++
		case err != nil && firstErr == nil:
			firstErr = err
		}
	}
	// Every range already compacted at or above: etcd's "compacted" error. A
	// range that had (a retry after a partial failure) counts as done.
	if compacted == len(ranges) {
		return nil, ToGRPC(statemachine.ErrCompacted)
	}
	if firstErr != nil {
		return nil, ToGRPC(fmt.Errorf("router: compaction at %d: %w", req.Revision, firstErr))
	}
	return &pb.CompactionResponse{Header: r.header(nil, current)}, nil
}
