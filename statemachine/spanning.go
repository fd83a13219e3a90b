package statemachine

import (
	"bytes"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// A write spanning ranges (docs/design.md, "Writes spanning ranges") comes
// to each range it touches as a TxnHoldCommand, then a TxnCommitCommand or a
// TxnAbortCommand. The hold evaluates the range's share of the request's
// compares and checks against the state before its revision and holds the
// range: until the write ends there, nothing else that writes keys applies
// (ErrRangeHeld), so the state the compares saw is still the state when
// the write commits, at a later revision taken once for every range.

// TxnNumbers numbers a Txn's compares and operations depth first: at each
// level its compares, then its success operations, then its failure
// operations; a nested Txn's compares and operations are numbered right
// after its own operation's number. TxnHoldResult is indexed by them.
type TxnNumbers struct {
	firstCompare map[*pb.TxnRequest]int
	firstOp      map[*pb.TxnRequest]int
	// Compares and Ops count the whole request's compares and operations.
	Compares, Ops int
	compares      []*pb.Compare
	ops           []*pb.RequestOp
}

// Compare returns compare number i.
func (n *TxnNumbers) Compare(i int) *pb.Compare { return n.compares[i] }

// Op returns operation number i.
func (n *TxnNumbers) Op(i int) *pb.RequestOp { return n.ops[i] }

// NumberTxn numbers req's compares and operations.
func NumberTxn(req *pb.TxnRequest) *TxnNumbers {
	n := &TxnNumbers{firstCompare: map[*pb.TxnRequest]int{}, firstOp: map[*pb.TxnRequest]int{}}
	n.number(req)
	return n
}

func (n *TxnNumbers) number(req *pb.TxnRequest) {
	n.firstCompare[req] = n.Compares
	n.Compares += len(req.Compare)
	n.compares = append(n.compares, req.Compare...)
	n.firstOp[req] = n.Ops
	n.Ops += len(req.Success) + len(req.Failure)
	n.ops = append(n.ops, req.Success...)
	n.ops = append(n.ops, req.Failure...)
	for _, op := range slices.Concat(req.Success, req.Failure) {
		if tv, ok := op.GetRequest().(*pb.RequestOp_RequestTxn); ok && tv.RequestTxn != nil {
			n.number(tv.RequestTxn)
		}
	}
}

// compare returns the number of req's i-th compare.
func (n *TxnNumbers) compare(req *pb.TxnRequest, i int) int { return n.firstCompare[req] + i }

// op returns the number of the i-th operation of req's branch (succeeded:
// success).
func (n *TxnNumbers) op(req *pb.TxnRequest, succeeded bool, i int) int {
	if succeeded {
		return n.firstOp[req] + i
	}
	return n.firstOp[req] + len(req.Success) + i
}

// Path returns the branches etcd takes through req (its outcome, then its
// nested Txns' on the taken branch, depth first), each level succeeding when
// every one of its compares matched; matched is asked by compare number.
func (n *TxnNumbers) Path(req *pb.TxnRequest, matched func(compare int) bool) []bool {
	ok := true
	for i := range req.Compare {
		if !matched(n.compare(req, i)) {
			ok = false
			break
		}
	}
	path := []bool{ok}
	for _, op := range branch(req, ok) {
		if tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn); isTxn {
			path = append(path, n.Path(tv.RequestTxn, matched)...)
		}
	}
	return path
}

// OnPath calls fn with the number of every operation on path, in etcd's
// order of checking them, until fn returns false.
func (n *TxnNumbers) OnPath(req *pb.TxnRequest, path []bool, fn func(op int) bool) {
	n.onPath(req, path, fn)
}

func (n *TxnNumbers) onPath(req *pb.TxnRequest, path []bool, fn func(op int) bool) (consumed int, more bool) {
	if len(path) == 0 {
		return 0, false
	}
	for i, op := range branch(req, path[0]) {
		if !fn(n.op(req, path[0], i)) {
			return consumed, false
		}
		if tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn); isTxn {
			c, more := n.onPath(tv.RequestTxn, path[1+consumed:], fn)
			consumed += c + 1
			if !more {
				return consumed, false
			}
		}
	}
	return consumed, true
}

// CompareOutcome combines the outcomes of compare c over every range: the
// compare matches when every key of its span, in whichever range, matched;
// a span with no key at all compares an empty KeyValue (etcd's
// applyCompare: a VALUE compare on no key is false).
func CompareOutcome(c *pb.Compare, parts []*tesserapb.CompareOutcome) bool {
	keys := false
	for _, p := range parts {
		if p.GetKeys() {
			keys = true
			if !p.GetMatched() {
				return false
			}
		}
	}
	if keys {
		return true
	}
	if c.Target == pb.Compare_VALUE {
		return false
	}
	return compareKV(c, &mvccpb.KeyValue{})
}

// clipSpan returns etcd's key/range_end pair cut to b, and whether any of
// it is in b.
func clipSpan(key, rangeEnd []byte, b bounds) (k, end []byte, ok bool) {
	s := spanOf(key, rangeEnd)
	if s.point {
		return key, nil, b.containsKey(key)
	}
	start := s.start
	if bytes.Compare(b.start, start) > 0 {
		start = b.start
	}
	stop := minEnd(s.end, b.end)
	if stop != nil && bytes.Compare(start, stop) >= 0 {
		return nil, nil, false
	}
	if stop == nil {
		return start, []byte{0}, true
	}
	return start, stop, true
}

// applyTxnHold applies a TxnHoldCommand at revision rev.
func (a *applier) applyTxnHold(rev int64, cmd *tesserapb.TxnHoldCommand) (*tesserapb.TxnHoldResult, error) {
	if len(cmd.GetTxnId()) == 0 {
		return nil, errorf(ErrInvalidCommand, "txn hold without an ID")
	}
	if lr := cmd.GetLeaseRevoke(); lr != nil {
		if len(cmd.GetRequest()) != 0 || len(cmd.GetAttach()) != 0 {
			return nil, errorf(ErrInvalidCommand, "txn hold of a lease revocation with a request")
		}
		a.state.hold = &tesserapb.TxnHold{TxnId: bytes.Clone(cmd.GetTxnId()), Revision: rev, LeaseRevoke: proto.CloneOf(lr)}
		return &tesserapb.TxnHoldResult{CompactedRevision: a.state.compactedRev, Revision: rev}, nil
	}
	req := &pb.TxnRequest{}
	if err := proto.Unmarshal(cmd.GetRequest(), req); err != nil {
		return nil, errorf(ErrInvalidCommand, "cannot decode the held txn request (%d bytes)", len(cmd.GetRequest()))
	}
	if err := checkTxnShape(req); err != nil {
		return nil, err
	}
	var err error
	if a.attaching, err = a.checkAttaches(cmd.GetAttach()); err != nil {
		return nil, err
	}
	defer func() { a.attaching = nil }()
	t := a.newTxnApplier(rev)
	n := NumberTxn(req)
	res := &tesserapb.TxnHoldResult{
		Compares:          make([]*tesserapb.CompareOutcome, n.Compares),
		CompactedRevision: a.state.compactedRev,
		Revision:          rev,
	}
	if err := t.holdLevel(req, n, res); err != nil {
		return nil, err
	}
	if err := a.writeAttached(a.attaching); err != nil {
		return nil, err
	}
	a.state.hold = &tesserapb.TxnHold{TxnId: bytes.Clone(cmd.GetTxnId()), Revision: rev, Request: bytes.Clone(cmd.GetRequest())}
	return res, nil
}

// holdLevel evaluates the compares of req (and of its nested Txns) on this
// range's keys and checks its Puts on them.
func (t *txnApplier) holdLevel(req *pb.TxnRequest, n *TxnNumbers, res *tesserapb.TxnHoldResult) error {
	for i, c := range req.Compare {
		out := &tesserapb.CompareOutcome{}
		if key, end, ok := clipSpan(c.Key, c.RangeEnd, t.a.bounds); ok {
			err := t.reader.scan(spanOf(key, end), t.startRev, func(k, v []byte) (bool, error) {
				kv, err := decodeVersion(k, v)
				if err != nil {
					return false, err
				}
				if !out.Keys {
					out.Keys, out.Matched = true, true
				}
				out.Matched = out.Matched && compareKV(c, kv)
				return true, nil
			})
			if err != nil {
				return err
			}
		}
		res.Compares[n.compare(req, i)] = out
	}
	for _, succeeded := range []bool{true, false} {
		for i, op := range branch(req, succeeded) {
			switch tv := op.GetRequest().(type) {
			case *pb.RequestOp_RequestPut:
				if !t.a.bounds.containsKey(tv.RequestPut.GetKey()) {
					continue
				}
				if err := t.checkPut(tv.RequestPut); err != nil {
					if !isCommandError(err) {
						return err
					}
					res.Failed = append(res.Failed, &tesserapb.OpFailure{
						Op: uint32(n.op(req, succeeded, i)), Code: ErrorCode(err), Message: err.Error(),
					})
				}
			case *pb.RequestOp_RequestTxn:
				if err := t.holdLevel(tv.RequestTxn, n, res); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// checkTxnShape is checkTxnStatic without the bounds: a held request's
// keys lie in several ranges.
func checkTxnShape(req *pb.TxnRequest) error {
	err := checkTxnKeys(req, func(key, _ []byte) error {
		if len(key) == 0 {
			return ErrEmptyKey
		}
		return nil
	})
	if err != nil {
		return err
	}
	return CheckTxnWrites(req)
}

// heldFor returns the range's hold when it is for txnID.
func (a *applier) heldFor(txnID []byte) *tesserapb.TxnHold {
	if h := a.state.hold; h != nil && bytes.Equal(h.GetTxnId(), txnID) {
		return h
	}
	return nil
}

// applyTxnCommit applies a TxnCommitCommand at revision rev: the held
// request's operations on this range's keys, along the path given.
func (a *applier) applyTxnCommit(rev int64, cmd *tesserapb.TxnCommitCommand) (proto.Message, bool, error) {
	h := a.heldFor(cmd.GetTxnId())
	if h == nil {
		return nil, false, errorf(ErrNotHeld, "commit of a write the range is not held for")
	}
	if lr := h.GetLeaseRevoke(); lr != nil {
		if len(cmd.GetPath()) != 0 {
			return nil, false, errorf(ErrInvalidCommand, "commit path of %d branches for a lease revocation", len(cmd.GetPath()))
		}
		resp, changed, err := a.applyLeaseRevoke(rev, lr)
		if err != nil {
			return nil, false, err
		}
		a.endHold(rev, cmd)
		return resp, changed, nil
	}
	req := &pb.TxnRequest{}
	if err := proto.Unmarshal(h.GetRequest(), req); err != nil {
		return nil, false, errorf(ErrInvalidCommand, "cannot decode the held txn request (%d bytes)", len(h.GetRequest()))
	}
	path := cmd.GetPath()
	if want := txnPathLength(req, path); want < 0 || want != len(path) {
		return nil, false, errorf(ErrInvalidCommand, "commit path of %d branches does not fit the held request", len(path))
	}
	clip := a.bounds
	t := a.newTxnApplier(rev)
	t.clip = &clip
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	if _, err := t.execute(req, path, resp); err != nil {
		return nil, false, err
	}
	resp.Header.Revision = t.readRevNow()
	a.endHold(rev, cmd)
	return resp, t.changed, nil
}

// endHold ends the range's hold with cmd's commit at rev, noting the
// write's other ranges in the range's co-commits.
func (a *applier) endHold(rev int64, cmd *tesserapb.TxnCommitCommand) {
	a.state.hold = nil
	if ids := cmd.GetRangeIds(); len(ids) > 0 {
		a.state.coCommits = a.state.coCommits.with(a.rangeID, ids, rev)
	}
}

// txnPathLength returns how many branches a path through req has when it
// begins as path does, or -1 when path is too short.
func txnPathLength(req *pb.TxnRequest, path []bool) int {
	if len(path) == 0 {
		return -1
	}
	used := 1
	for _, op := range branch(req, path[0]) {
		if tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn); isTxn {
			n := txnPathLength(tv.RequestTxn, path[used:])
			if n < 0 {
				return -1
			}
			used += n
		}
	}
	return used
}

// applyTxnAbort ends the range's hold for cmd's write, if it holds one.
func (a *applier) applyTxnAbort(cmd *tesserapb.TxnAbortCommand) {
	if a.heldFor(cmd.GetTxnId()) != nil {
		a.state.hold = nil
	}
}
