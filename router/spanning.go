package router

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// Writes spanning ranges (docs/design.md, "Writes spanning ranges"). The
// node serving the request coordinates: it holds every range the request
// touches (TxnHoldCommand, each at a revision of its own), decides the
// branches from the compares' outcomes the holds report, takes one revision
// R, records the commit with R in the meta range, then commits each range's
// share at R. A range held too long asks the meta range for the outcome
// (ResolveHold), recording an abort if none was recorded, so a coordinator
// that dies leaves nothing half applied.

// TxnRecords records the outcomes of writes spanning ranges (the meta
// range: meta.Replica).
type TxnRecords interface {
	DecideTxn(ctx context.Context, d *tesserapb.DecideTxnCommand) (*tesserapb.TxnRecord, error)
	ForgetTxn(ctx context.Context, txnID []byte, rangeID uint64) error
}

// maxSpanningAttempts bounds how often a write spanning ranges starts over:
// after meeting another write's hold, a split of a range it touches, or an
// abort recorded by a range that found it too slow.
const maxSpanningAttempts = 20

// orderedHoldTries bounds how often an ordered hold refused for meeting a
// hold is sent again before its write starts over.
const orderedHoldTries = 3

// errStartOver says a write spanning ranges changed nothing and may start
// over (after a pause).
var errStartOver = errors.New("router: the write spanning ranges starts over")

// spanningTxn runs req, whose keys lie in several ranges, atomically at one
// revision.
func (r *Router) spanningTxn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if r.cfg.TxnRecords == nil {
		return nil, errors.New("router: no record of writes spanning ranges configured")
	}
	n := statemachine.NumberTxn(req)
	sent, err := proto.Marshal(storeOrderedRanges(req))
	if err != nil {
		return nil, err
	}
	var resp *pb.TxnResponse
	err = r.startingOver(ctx, func(attempt int) (err error) {
		// The first attempt holds every range at once, unless one of them
		// met another write's hold lately; one that starts over (most
		// often for meeting another write's hold) takes its holds in key
		// order, waiting for other holds to end.
		resp, err = r.spanningOnce(ctx, req, sent, n, attempt > 0)
		return err
	})
	return resp, err
}

// startingOver runs once (with the attempt's number) until it does not ask
// to start over (errStartOver), at most maxSpanningAttempts times, pausing
// between.
func (r *Router) startingOver(ctx context.Context, once func(attempt int) error) error {
	var last error
	for attempt := range maxSpanningAttempts {
		err := once(attempt)
		if !errors.Is(err, errStartOver) {
			return err
		}
		last = err
		if err := r.startOverPause(ctx, attempt); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: %v", shard.ErrTimeout, last)
}

// startOverPause waits before a write spanning ranges starts over. Two
// writes holding ranges in opposite orders both start over: random pauses,
// growing, let one of them through.
func (r *Router) startOverPause(ctx context.Context, attempt int) error {
	pause := time.Duration(attempt+1) * time.Duration(5+mrand.IntN(20)) * time.Millisecond
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.stopper.ShouldQuiesce():
		return shard.ErrStopped
	case <-time.After(pause):
		return nil
	}
}

// newTxnID names a write spanning ranges.
func newTxnID() []byte {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	return id
}

// storeOrderedRanges returns req with its Range operations asking each range
// for its keys in key order, up to the limit the whole answer needs
// (statemachine.StoreLimit), so that the coordinator sorts and limits the
// merged answer as one store would (mergeRange).
func storeOrderedRanges(req *pb.TxnRequest) *pb.TxnRequest {
	out := proto.CloneOf(req)
	var walk func(t *pb.TxnRequest)
	walk = func(t *pb.TxnRequest) {
		for _, op := range slices.Concat(t.Success, t.Failure) {
			switch tv := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange:
				rr := tv.RequestRange
				limit := statemachine.StoreLimit(rr)
				rr.KeysOnly = rr.KeysOnly && rr.SortTarget != pb.RangeRequest_VALUE
				rr.SortOrder, rr.SortTarget, rr.Limit = pb.RangeRequest_NONE, pb.RangeRequest_KEY, max(limit, 0)
			case *pb.RequestOp_RequestTxn:
				walk(tv.RequestTxn)
			}
		}
	}
	walk(out)
	return out
}

// participant is one range a write spanning ranges holds.
type participant struct {
	rng Range
	// generation is the generation of the range's bounds the request was
	// routed by.
	generation uint64
	hold       *tesserapb.TxnHoldResult
	resp       *pb.TxnResponse
}

// errSplitBeforeHold: a range split after the write was routed and before
// its hold applied, so the hold does not cover every key routed to it.
var errSplitBeforeHold = errors.New("router: a range split before its hold")

// spanningOnce runs one attempt of a write spanning ranges. Holds go to
// every range at once, a hold meeting another write's failing at once
// (ErrHoldConflict: the attempt starts over); or, ordered, one range after
// another in key order, each waiting for another write's hold to end.
// Writes wait only for holds of ranges after the ones they hold, so no two
// wait for each other.
func (r *Router) spanningOnce(ctx context.Context, req *pb.TxnRequest, sent []byte, n *statemachine.TxnNumbers, ordered bool) (*pb.TxnResponse, error) {
	ranges, err := r.rangesOfIntervals(txnIntervals(req))
	if err != nil {
		return nil, err
	}
	ordered = ordered || r.contended.any(ranges)
	txnID := newTxnID()
	parts := make([]*participant, len(ranges))
	for i, rng := range ranges {
		parts[i] = &participant{rng: rng, generation: r.generationOf(rng)}
	}

	// Hold every range.
	leased := len(txnLeases(req)) > 0
	hold := func(p *participant) error {
		cmd := &tesserapb.TxnHoldCommand{TxnId: txnID, Request: sent, Wait: ordered}
		if leased {
			attach, _, err := r.proveLeases(ctx, p.rng, req)
			if err != nil && !errors.Is(err, statemachine.ErrLeaseNotFound) {
				return err
			}
			cmd.Attach = attach
		}
		res, err := r.writeTo(ctx, p.rng, &tesserapb.Command{Op: &tesserapb.Command_TxnHold{TxnHold: cmd}}, true, 0)
		if err != nil {
			return err
		}
		if res.GetGeneration() != p.generation {
			// The range's bounds changed (a split) since the routing: the
			// keys routed to it may now lie in a range not held.
			return errSplitBeforeHold
		}
		p.hold = &tesserapb.TxnHoldResult{}
		return proto.Unmarshal(res.GetResponse(), p.hold)
	}
	var errs []error
	if ordered {
		errs = make([]error, len(parts))
		for i, p := range parts {
			// A hold of a write that does not wait may take the range
			// between the leader's check and this hold's apply: wait again,
			// a few times. (The hold met may also be this write's own, from
			// a try whose answer was lost: then the write starts over.)
			errs[i] = hold(p)
			for tries := 0; tries < orderedHoldTries && errors.Is(errs[i], statemachine.ErrHoldConflict) && ctx.Err() == nil; tries++ {
				errs[i] = hold(p)
			}
			if errs[i] != nil {
				break
			}
		}
	} else {
		errs = r.onEach(parts, hold)
	}
	if err := errors.Join(errs...); err != nil {
		r.abortHolds(txnID, parts)
		for i, e := range errs {
			if errors.Is(e, statemachine.ErrHoldConflict) {
				r.contended.met(parts[i].rng.RangeID())
			}
		}
		for _, e := range errs {
			if errors.Is(e, statemachine.ErrHoldConflict) || errors.Is(e, statemachine.ErrLeaseProofOld) {
				return nil, fmt.Errorf("%w: %v", errStartOver, e)
			}
			if errors.Is(e, statemachine.ErrWrongRange) || errors.Is(e, errSplitBeforeHold) {
				r.ranges.Refresh()
				return nil, fmt.Errorf("%w: %v", errStartOver, e)
			}
		}
		return nil, firstError(errs)
	}

	if hook := r.cfg.Knobs.AfterTxnHeld; hook != nil {
		hook(txnID)
	}
	// The branches, from the compares' outcomes over every range, and the
	// checks of the operations on them.
	path := n.Path(req, func(c int) bool {
		outcomes := make([]*tesserapb.CompareOutcome, len(parts))
		for i, p := range parts {
			outcomes[i] = p.hold.GetCompares()[c]
		}
		return statemachine.CompareOutcome(n.Compare(c), outcomes)
	})
	failed := map[uint32]*tesserapb.OpFailure{}
	var compacted int64
	for _, p := range parts {
		for _, f := range p.hold.GetFailed() {
			failed[f.Op] = f
		}
		compacted = max(compacted, p.hold.GetCompactedRevision())
	}
	rev, err := r.oracle.NextN(ctx, 1)
	if err != nil {
		r.abortHolds(txnID, parts)
		return nil, err
	}
	var checkErr error
	n.OnPath(req, path, func(op int) bool {
		if f := failed[uint32(op)]; f != nil {
			checkErr = statemachine.ErrorFromResult(&tesserapb.Result{Code: f.Code, Message: f.Message})
		} else if rr := n.Op(op).GetRequestRange(); rr != nil {
			// As each range's Range checks its revision: the state the Txn
			// reads is the state at rev-1.
			_, checkErr = statemachine.ReadRevision(rr.Revision, rev-1, compacted)
		}
		return checkErr == nil
	})
	if checkErr != nil {
		r.abortHolds(txnID, parts)
		return nil, checkErr
	}

	err = r.recordAndCommit(ctx, txnID, parts, rev, path, func(p *participant, res *tesserapb.Result) error {
		p.resp = &pb.TxnResponse{}
		return proto.Unmarshal(res.GetResponse(), p.resp)
	})
	if err != nil {
		return nil, err
	}
	resps := make([]*pb.TxnResponse, len(parts))
	for i, p := range parts {
		resps[i] = p.resp
	}
	out := mergeTxn(req, path, resps, rev)
	return out, nil
}

// recordAndCommit records the commit of a write holding parts at rev on
// path, then commits it on every range, passing each range's result to
// answered. A write whose abort a range recorded first starts over.
func (r *Router) recordAndCommit(ctx context.Context, txnID []byte, parts []*participant, rev int64, path []bool, answered func(*participant, *tesserapb.Result) error) error {
	ids := make([]uint64, len(parts))
	var minHold int64
	for i, p := range parts {
		ids[i] = p.rng.RangeID()
		if h := p.hold.GetRevision(); i == 0 || h < minHold {
			minHold = h
		}
	}
	rec, err := r.cfg.TxnRecords.DecideTxn(ctx, &tesserapb.DecideTxnCommand{
		TxnId: txnID, Commit: true, Revision: rev, Path: path, RangeIds: ids, MinHoldRevision: minHold,
	})
	if err != nil {
		// The commit may have been recorded: the holds stay, and the ranges
		// settle the outcome from the record (ResolveHold).
		return fmt.Errorf("%w: recording a write spanning ranges: %v", shard.ErrTimeout, err)
	}
	if !rec.GetCommitted() {
		// A range found this write too slow and recorded its abort.
		r.abortHolds(txnID, parts)
		_ = r.cfg.TxnRecords.ForgetTxn(ctx, txnID, 0)
		return fmt.Errorf("%w: aborted by a held range", errStartOver)
	}
	if hook := r.cfg.Knobs.AfterTxnRecorded; hook != nil {
		hook(txnID)
	}
	commit := commitCommand(txnID, rev, path, ids)
	errs := r.onEach(parts, func(p *participant) error {
		if hook := r.cfg.Knobs.BeforeTxnCommit; hook != nil {
			hook(txnID, p.rng.RangeID())
		}
		res, err := r.writeTo(ctx, p.rng, commit, false, 0)
		if err != nil {
			return err
		}
		if hook := r.cfg.Knobs.AfterTxnCommit; hook != nil {
			hook(txnID, p.rng.RangeID())
		}
		return answered(p, res)
	})
	if err := errors.Join(errs...); err != nil {
		// Committed: a range that did not answer applies it from the record.
		return fmt.Errorf("%w: committing a write spanning ranges: %v", shard.ErrTimeout, firstError(errs))
	}
	_ = r.stopper.RunAsync(func() {
		ctx, cancel := r.stopper.WithTimeout(forgetTimeout)
		defer cancel()
		_ = r.cfg.TxnRecords.ForgetTxn(ctx, txnID, 0)
	})
	return nil
}

// forgetTimeout bounds the proposal that drops a write's record.
const forgetTimeout = 10 * time.Second

// onEach runs fn for every participant at once and returns their errors.
func (r *Router) onEach(parts []*participant, fn func(*participant) error) []error {
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(p)
		}()
	}
	wg.Wait()
	return errs
}

// abortHolds ends the holds of a write that will not commit, on every range
// it may hold (an abort where it holds nothing changes nothing). A range
// the abort does not reach aborts by itself later (ResolveHold).
func (r *Router) abortHolds(txnID []byte, parts []*participant) {
	ctx, cancel := r.stopper.WithTimeout(forgetTimeout)
	defer cancel()
	abort := abortCommand(txnID)
	r.onEach(parts, func(p *participant) error {
		_, err := r.writeTo(ctx, p.rng, abort, false, 0)
		return err
	})
}

// commitCommand commits write txnID on a range it holds, at rev on path;
// rangeIDs are every range the write holds.
func commitCommand(txnID []byte, rev int64, path []bool, rangeIDs []uint64) *tesserapb.Command {
	return &tesserapb.Command{Revision: rev, Op: &tesserapb.Command_TxnCommit{TxnCommit: &tesserapb.TxnCommitCommand{
		TxnId: txnID, Path: path, RangeIds: rangeIDs,
	}}}
}

// abortCommand ends a range's hold for write txnID.
func abortCommand(txnID []byte) *tesserapb.Command {
	return &tesserapb.Command{Op: &tesserapb.Command_TxnAbort{TxnAbort: &tesserapb.TxnAbortCommand{TxnId: txnID}}}
}

func branch(req *pb.TxnRequest, succeeded bool) []*pb.RequestOp {
	if succeeded {
		return req.Success
	}
	return req.Failure
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// ResolveHold settles the hold of write txnID on rng, whose coordinator
// has not ended it: it records the write's abort in the meta range unless
// an outcome was recorded before, then applies the recorded outcome to
// rng. The node's hold sweeper calls it on the ranges it leads.
func (r *Router) ResolveHold(ctx context.Context, rng Range, txnID []byte) error {
	if r.cfg.TxnRecords == nil {
		return nil
	}
	rec, err := r.cfg.TxnRecords.DecideTxn(ctx, &tesserapb.DecideTxnCommand{TxnId: txnID})
	if err != nil {
		return err
	}
	if hook := r.cfg.Knobs.AfterHoldDecided; hook != nil {
		hook(txnID, rec.GetCommitted())
	}
	if !rec.GetCommitted() {
		_, err := r.writeTo(ctx, rng, abortCommand(txnID), false, 0)
		return err
	}
	return r.commitAndForget(ctx, rng, rec)
}

// SettleCommitted makes sure range rangeID has applied rec, a committed
// record some range has not reported done with (its coordinator died while
// committing): it sends the commit, which a range still held by the write
// applies and any other refuses (ErrNotHeld: it applied it before), and
// tells the meta range this range is done with it. Anyone may: a range
// held by a write whose commit is recorded can only commit it.
func (r *Router) SettleCommitted(ctx context.Context, rec *tesserapb.TxnRecord, rangeID uint64) error {
	rng := r.ranges.byID(rangeID)
	if rng == nil {
		return fmt.Errorf("router: range %d is not in the range cache", rangeID)
	}
	return r.commitAndForget(ctx, rng, rec)
}

// commitAndForget sends rec's commit to rng and, once rng has applied it
// (now or before), forgets the record for rng.
func (r *Router) commitAndForget(ctx context.Context, rng Range, rec *tesserapb.TxnRecord) error {
	ids := rec.GetParticipants()
	if len(ids) == 0 {
		ids = rec.GetRangeIds() // a record made before participants were kept
	}
	_, err := r.writeTo(ctx, rng, commitCommand(rec.GetTxnId(), rec.GetRevision(), rec.GetPath(), ids), false, 0)
	if err != nil && !errors.Is(err, statemachine.ErrNotHeld) {
		return err
	}
	return r.cfg.TxnRecords.ForgetTxn(ctx, rec.GetTxnId(), rng.RangeID())
}

// mergeTxn merges the ranges' responses to their shares of req (in key
// order of the ranges) into the response one store would give, at revision
// rev: each operation's answer from the ranges holding its keys, and the
// headers as one Txn's (rev once anything was written, rev-1 before).
func mergeTxn(req *pb.TxnRequest, path []bool, parts []*pb.TxnResponse, rev int64) *pb.TxnResponse {
	m := &txnMerger{rev: rev}
	out := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	m.merge(req, path, parts, out)
	out.Header.Revision = m.readRev()
	return out
}

type txnMerger struct {
	rev     int64
	changed bool
}

func (m *txnMerger) readRev() int64 {
	if m.changed {
		return m.rev
	}
	return m.rev - 1
}

// merge fills out from the parts' answers to req's operations on path and
// returns how many nested Txns of path it consumed.
func (m *txnMerger) merge(req *pb.TxnRequest, path []bool, parts []*pb.TxnResponse, out *pb.TxnResponse) int {
	out.Succeeded = path[0]
	ops := branch(req, path[0])
	out.Responses = make([]*pb.ResponseOp, len(ops))
	consumed := 0
	for i, op := range ops {
		answers := make([]*pb.ResponseOp, len(parts))
		for j, p := range parts {
			answers[j] = p.GetResponses()[i]
		}
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestPut:
			put := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: m.rev}}
			for _, a := range answers {
				if prev := a.GetResponsePut().GetPrevKv(); prev != nil {
					put.PrevKv = prev
				}
			}
			m.changed = true
			out.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: put}}
		case *pb.RequestOp_RequestDeleteRange:
			del := &pb.DeleteRangeResponse{}
			for _, a := range answers {
				d := a.GetResponseDeleteRange()
				del.Deleted += d.GetDeleted()
				del.PrevKvs = append(del.PrevKvs, d.GetPrevKvs()...)
			}
			if del.Deleted > 0 {
				m.changed = true
			}
			del.Header = &pb.ResponseHeader{Revision: m.readRev()}
			out.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: del}}
		case *pb.RequestOp_RequestRange:
			rangeParts := make([]*pb.RangeResponse, len(answers))
			for j, a := range answers {
				rangeParts[j] = a.GetResponseRange()
			}
			rr := mergeRange(tv.RequestRange, rangeParts)
			rr.Header = &pb.ResponseHeader{Revision: m.readRev()}
			out.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestTxn:
			subParts := make([]*pb.TxnResponse, len(answers))
			for j, a := range answers {
				subParts[j] = a.GetResponseTxn()
			}
			sub := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
			consumed += m.merge(tv.RequestTxn, path[1+consumed:], subParts, sub) + 1
			out.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}}
		}
	}
	return consumed
}

// mergeRange merges the ranges' key-ordered answers to a Range (asked as
// storeOrderedRanges asks it) into the answer req gets from one store:
// sorted and limited as it asks.
func mergeRange(req *pb.RangeRequest, parts []*pb.RangeResponse) *pb.RangeResponse {
	out := &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{}}
	for _, p := range parts {
		out.Count += p.GetCount()
		out.Kvs = append(out.Kvs, p.GetKvs()...)
	}
	if req.CountOnly {
		out.Kvs = []*mvccpb.KeyValue{}
		return out
	}
	// The parts are in key order: one store would have collected the first
	// StoreLimit of them before sorting (etcd sorts a limited Range by a
	// target other than the key only over those, when no order is given).
	if limit := statemachine.StoreLimit(req); limit > 0 && int64(len(out.Kvs)) > limit {
		out.Kvs = out.Kvs[:limit]
	}
	statemachine.SortKVs(out.Kvs, req)
	if req.Limit > 0 && int64(len(out.Kvs)) > req.Limit {
		out.Kvs, out.More = out.Kvs[:req.Limit], true
	}
	if req.KeysOnly {
		for _, kv := range out.Kvs {
			kv.Value = nil
			if req.SortTarget != pb.RangeRequest_VALUE {
				kv.Lease = 0
			}
		}
	}
	return out
}

// revokeAtOneRevision revokes lease id on the home range and on every range
// want accepts as one write spanning them: each range deletes its keys of
// the lease at one revision, which it returns. A range that split before
// its hold applied has its children held too (a hold keeps a range from
// splitting, so the set of ranges settles).
func (r *Router) revokeAtOneRevision(ctx context.Context, id int64, home Range, want func(Range) bool) (int64, error) {
	var rev int64
	err := r.startingOver(ctx, func(int) (err error) {
		rev, err = r.revokeOnce(ctx, id, home, want)
		return err
	})
	return rev, err
}

func (r *Router) revokeOnce(ctx context.Context, id int64, home Range, want func(Range) bool) (int64, error) {
	txnID := newTxnID()
	var (
		mu    sync.Mutex
		parts []*participant // every range a hold was sent to
	)
	hold := func(rng Range) (*tesserapb.Result, error) {
		p := &participant{rng: rng, hold: &tesserapb.TxnHoldResult{}}
		mu.Lock()
		parts = append(parts, p)
		mu.Unlock()
		cmd := &tesserapb.TxnHoldCommand{TxnId: txnID, LeaseRevoke: &tesserapb.LeaseRevokeCommand{
			Id: id, WithoutRecord: true, KeepRecord: rng.RangeID() == home.RangeID(),
		}}
		res, err := r.writeTo(ctx, rng, &tesserapb.Command{Op: &tesserapb.Command_TxnHold{TxnHold: cmd}}, true, 0)
		if err == nil {
			err = proto.Unmarshal(res.GetResponse(), p.hold)
		}
		return res, err
	}
	wanted := func(rng Range) bool { return rng.RangeID() == home.RangeID() || want == nil || want(rng) }
	if err := r.everyRange(ctx, map[uint64]bool{}, wanted, hold); err != nil {
		r.abortHolds(txnID, parts)
		if errors.Is(err, statemachine.ErrHoldConflict) {
			return 0, fmt.Errorf("%w: %v", errStartOver, err)
		}
		return 0, fmt.Errorf("router: revoking lease %x: %w", id, err)
	}
	rev, err := r.oracle.NextN(ctx, 1)
	if err != nil {
		r.abortHolds(txnID, parts)
		return 0, err
	}
	err = r.recordAndCommit(ctx, txnID, parts, rev, nil, func(*participant, *tesserapb.Result) error { return nil })
	if err != nil {
		return 0, err
	}
	return rev, nil
}
