package statemachine

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// A Txn is applied in three steps, after etcd (server/etcdserver/txn/txn.go):
//
//  1. Static checks over the whole request tree, both branches: empty keys,
//     keys outside the range's bounds, empty operations, and the duplicate-key
//     rule (checkWrites).
//  2. Every compare of the tree is evaluated against the state at the start of
//     the command, which fixes the path (branch taken at each level); then the
//     operations on that path are checked against the same start state: read
//     revisions, lease existence, ignore_value/ignore_lease on a missing key.
//  3. The path is executed in order at the command's revision. Reads inside
//     the txn see the txn's earlier writes (as etcd's write txn does: it reads
//     at beginRev+1 once anything changed). Nothing in this step can fail but
//     storage, so a failing command leaves no trace.
//
// Responses are etcd's: every nested Put/DeleteRange/Range response carries a
// Header with only the revision etcd puts there, nested TxnResponses an empty
// Header, and the top-level Header the command's revision when anything
// changed, the revision before it (cmdRev-1) otherwise. With one global
// revision counter that is what keeps headers from going backwards for a
// client: cmdRev was taken after every write the client saw had been
// acknowledged.

// txnApplier applies one Txn command.
type txnApplier struct {
	a      *applier
	cmdRev int64
	// startRev is the revision the command's reads and compares see before it
	// writes anything: cmdRev-1. Every write to this range below cmdRev has
	// been applied before this command (revisions are proposed in log order
	// and lower ones are refused after higher ones), so the state now is the
	// state at cmdRev-1, even when the range's last write is older: other
	// ranges took the revisions in between.
	startRev  int64
	compacted int64
	reader    mvccReader
	writer    mvccWriter
	changed   bool
	// clip, when set, limits the operations to the range's own keys (the
	// range's share of a write spanning ranges): an operation on keys
	// elsewhere answers empty.
	clip *bounds
}

// clipped returns key/range_end cut to t.clip, and whether any of it is
// left (always, without a clip).
func (t *txnApplier) clipped(key, rangeEnd []byte) (k, end []byte, ok bool) {
	if t.clip == nil {
		return key, rangeEnd, true
	}
	return clipSpan(key, rangeEnd, *t.clip)
}

// newTxnApplier returns the applier of a Txn (or of a range's share of a
// write spanning ranges) at revision rev, reading the state before it.
func (a *applier) newTxnApplier(rev int64) *txnApplier {
	return &txnApplier{
		a:         a,
		cmdRev:    rev,
		startRev:  rev - 1,
		compacted: a.state.compactedRev,
		reader:    mvccReader{r: a.b, points: &a.points},
		writer:    mvccWriter{b: a.b, rev: rev, log: a.log},
	}
}

// readRevNow is the revision reads see at this point of the txn.
func (t *txnApplier) readRevNow() int64 {
	if t.changed {
		return t.cmdRev
	}
	return t.startRev
}

func (a *applier) applyTxn(cmdRev int64, req *pb.TxnRequest) (*pb.TxnResponse, bool, error) {
	if err := a.checkTxnStatic(req); err != nil {
		return nil, false, err
	}
	t := a.newTxnApplier(cmdRev)
	path, err := t.path(req)
	if err != nil {
		return nil, false, err
	}
	if _, err := t.check(req, path); err != nil {
		return nil, false, err
	}
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	if _, err := t.execute(req, path, resp); err != nil {
		return nil, false, err
	}
	resp.Header.Revision = t.readRevNow()
	return resp, t.changed, nil
}

// checkTxnStatic runs the checks that do not depend on the state.
func (a *applier) checkTxnStatic(req *pb.TxnRequest) error {
	if err := checkTxnKeys(req, a.checkSpan); err != nil {
		return err
	}
	return CheckTxnWrites(req)
}

func (a *applier) checkSpan(key, rangeEnd []byte) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	if !a.bounds.containsSpan(spanOf(key, rangeEnd)) {
		return errorf(ErrWrongRange, "key %q range_end %q", key, rangeEnd)
	}
	return nil
}

// checkTxnKeys runs check on every key interval of req, both branches and
// nested Txns included, and refuses empty operations.
func checkTxnKeys(req *pb.TxnRequest, check func(key, rangeEnd []byte) error) error {
	for _, c := range req.Compare {
		if err := check(c.Key, c.RangeEnd); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			var err error
			switch tv := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange:
				err = check(tv.RequestRange.GetKey(), tv.RequestRange.GetRangeEnd())
			case *pb.RequestOp_RequestPut:
				err = check(tv.RequestPut.GetKey(), nil)
			case *pb.RequestOp_RequestDeleteRange:
				err = check(tv.RequestDeleteRange.GetKey(), tv.RequestDeleteRange.GetRangeEnd())
			case *pb.RequestOp_RequestTxn:
				if tv.RequestTxn == nil {
					return errorf(ErrInvalidCommand, "empty txn operation")
				}
				err = checkTxnKeys(tv.RequestTxn, check)
			default:
				return errorf(ErrInvalidCommand, "empty txn operation")
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// writeSet is what a list of operations may write on some path.
type writeSet struct {
	puts [][]byte
	dels []keySpan
}

func (w writeSet) conflicts(o writeSet) bool {
	for _, p := range w.puts {
		for _, q := range o.puts {
			if bytes.Equal(p, q) {
				return true
			}
		}
		for _, d := range o.dels {
			if d.contains(p) {
				return true
			}
		}
	}
	for _, q := range o.puts {
		for _, d := range w.dels {
			if d.contains(q) {
				return true
			}
		}
	}
	return false
}

// checkWrites enforces etcd's rule that a txn writes no key twice
// (api/v3rpc/key.go checkIntervals): along any path, no two operations put the
// same key, and no key is both put and deleted. Two deletes may overlap.
// Success and failure of a nested txn are exclusive, so they are checked
// separately and then together against their siblings. This is stricter than
// etcd's check in two corners (a delete with range_end "\x00", and a put in
// an earlier nested txn under a delete in a later one), where etcd would
// write one key twice in one revision; we refuse those too, since one
// revision holds one version of a key here.
func checkWrites(ops []*pb.RequestOp) (writeSet, error) {
	var all writeSet
	for _, op := range ops {
		var ws writeSet
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestPut:
			ws.puts = [][]byte{tv.RequestPut.GetKey()}
		case *pb.RequestOp_RequestDeleteRange:
			ws.dels = []keySpan{spanOf(tv.RequestDeleteRange.GetKey(), tv.RequestDeleteRange.GetRangeEnd())}
		case *pb.RequestOp_RequestTxn:
			then, err := checkWrites(tv.RequestTxn.GetSuccess())
			if err != nil {
				return writeSet{}, err
			}
			els, err := checkWrites(tv.RequestTxn.GetFailure())
			if err != nil {
				return writeSet{}, err
			}
			ws.puts = append(then.puts, els.puts...)
			ws.dels = append(then.dels, els.dels...)
		}
		if ws.conflicts(all) {
			return writeSet{}, ErrDuplicateKey
		}
		all.puts = append(all.puts, ws.puts...)
		all.dels = append(all.dels, ws.dels...)
	}
	return all, nil
}

// path evaluates every compare on the way, against the start state, and
// returns the branches taken in etcd's order (depth first).
func (t *txnApplier) path(req *pb.TxnRequest) ([]bool, error) {
	ok := true
	for _, c := range req.Compare {
		match, err := t.compare(c)
		if err != nil {
			return nil, err
		}
		if !match {
			ok = false
			break
		}
	}
	path := []bool{ok}
	for _, op := range branch(req, ok) {
		if tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn); isTxn {
			sub, err := t.path(tv.RequestTxn)
			if err != nil {
				return nil, err
			}
			path = append(path, sub...)
		}
	}
	return path, nil
}

func branch(req *pb.TxnRequest, succeeded bool) []*pb.RequestOp {
	if succeeded {
		return req.Success
	}
	return req.Failure
}

// compare evaluates c against every key of its span (etcd's applyCompare): a
// span with no key compares an empty KeyValue, except that a VALUE compare
// on missing keys is always false.
func (t *txnApplier) compare(c *pb.Compare) (bool, error) {
	var kvs []*mvccpb.KeyValue
	err := t.reader.scan(spanOf(c.Key, c.RangeEnd), t.startRev, func(k, v []byte) (bool, error) {
		kv, err := decodeVersion(k, v)
		kvs = append(kvs, kv)
		return err == nil, err
	})
	if err != nil {
		return false, err
	}
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		result = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		result = cmpInt64(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = cmpInt64(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = cmpInt64(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = cmpInt64(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

// check validates the operations on path against the start state (etcd's
// checkTxn). It returns how many nested txns it consumed from path.
func (t *txnApplier) check(req *pb.TxnRequest, path []bool) (int, error) {
	consumed := 0
	for _, op := range branch(req, path[0]) {
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			if _, err := readRev(tv.RequestRange.Revision, t.startRev, t.compacted); err != nil {
				return 0, err
			}
		case *pb.RequestOp_RequestPut:
			if err := t.checkPut(tv.RequestPut); err != nil {
				return 0, err
			}
		case *pb.RequestOp_RequestTxn:
			n, err := t.check(tv.RequestTxn, path[1+consumed:])
			if err != nil {
				return 0, err
			}
			consumed += n + 1
		}
	}
	return consumed, nil
}

// checkPut checks the lease before the key, as etcd's checkPut does, so a
// put failing both answers "lease not found".
func (t *txnApplier) checkPut(p *pb.PutRequest) error {
	if p.Lease != 0 {
		found, err := t.a.leaseExists(p.Lease)
		if err != nil {
			return err
		}
		if !found {
			return errorf(ErrLeaseNotFound, "lease %d", p.Lease)
		}
	}
	if p.IgnoreValue || p.IgnoreLease {
		prev, err := t.reader.get(p.Key, t.startRev)
		if err != nil {
			return err
		}
		if prev == nil {
			return errorf(ErrKeyNotFound, "put %q with ignore_value or ignore_lease", p.Key)
		}
	}
	return nil
}

// execute runs the operations on path, filling resp; it returns how many
// nested txns it consumed from path.
func (t *txnApplier) execute(req *pb.TxnRequest, path []bool, resp *pb.TxnResponse) (int, error) {
	resp.Succeeded = path[0]
	ops := branch(req, path[0])
	resp.Responses = make([]*pb.ResponseOp, 0, len(ops))
	consumed := 0
	for _, op := range ops {
		var out pb.ResponseOp
		switch tv := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			rr := &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{}}
			if key, end, ok := t.clipped(tv.RequestRange.GetKey(), tv.RequestRange.GetRangeEnd()); ok {
				req := tv.RequestRange
				if t.clip != nil {
					req = proto.CloneOf(req)
					req.Key, req.RangeEnd = key, end
				}
				var err error
				if rr, err = executeRange(t.reader, req, t.readRevNow(), t.compacted, nil); err != nil {
					return 0, err
				}
			}
			rr.Header = &pb.ResponseHeader{Revision: t.readRevNow()}
			out.Response = &pb.ResponseOp_ResponseRange{ResponseRange: rr}
		case *pb.RequestOp_RequestPut:
			pr := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: t.cmdRev}}
			if _, _, ok := t.clipped(tv.RequestPut.GetKey(), nil); ok {
				var err error
				if pr, err = t.put(tv.RequestPut); err != nil {
					return 0, err
				}
			}
			out.Response = &pb.ResponseOp_ResponsePut{ResponsePut: pr}
		case *pb.RequestOp_RequestDeleteRange:
			dr := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: t.readRevNow()}}
			if key, end, ok := t.clipped(tv.RequestDeleteRange.GetKey(), tv.RequestDeleteRange.GetRangeEnd()); ok {
				req := tv.RequestDeleteRange
				if t.clip != nil {
					req = proto.CloneOf(req)
					req.Key, req.RangeEnd = key, end
				}
				var err error
				if dr, err = t.deleteRange(req); err != nil {
					return 0, err
				}
			}
			out.Response = &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}
		case *pb.RequestOp_RequestTxn:
			sub := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
			n, err := t.execute(tv.RequestTxn, path[1+consumed:], sub)
			if err != nil {
				return 0, err
			}
			consumed += n + 1
			out.Response = &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}
		}
		resp.Responses = append(resp.Responses, &out)
	}
	return consumed, nil
}

func (t *txnApplier) put(p *pb.PutRequest) (*pb.PutResponse, error) {
	prev, err := t.reader.get(p.Key, t.readRevNow())
	if err != nil {
		return nil, err
	}
	value, leaseID := p.Value, p.Lease
	if p.IgnoreValue {
		value = prev.Value
	}
	if p.IgnoreLease {
		leaseID = prev.Lease
	}
	if _, err := t.writer.put(p.Key, value, leaseID, prev); err != nil {
		return nil, err
	}
	t.changed = true
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: t.cmdRev}}
	if p.PrevKv {
		resp.PrevKv = prev
	}
	return resp, nil
}

func (t *txnApplier) deleteRange(d *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	var prevs []*mvccpb.KeyValue
	err := t.reader.scan(spanOf(d.Key, d.RangeEnd), t.readRevNow(), func(k, v []byte) (bool, error) {
		kv, err := decodeVersion(k, v)
		prevs = append(prevs, kv)
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	for _, prev := range prevs {
		if err := t.writer.delete(prev.Key, prev); err != nil {
			return nil, err
		}
	}
	if len(prevs) > 0 {
		t.changed = true
	}
	resp := &pb.DeleteRangeResponse{
		Header:  &pb.ResponseHeader{Revision: t.readRevNow()},
		Deleted: int64(len(prevs)),
	}
	if d.PrevKv {
		resp.PrevKvs = prevs
	}
	return resp, nil
}

// CheckTxnWrites applies the duplicate-key rule (checkWrites) to both branches
// of req, so the API edge refuses what the state machine would, before
// anything is proposed. It returns ErrDuplicateKey or nil.
func CheckTxnWrites(req *pb.TxnRequest) error {
	if _, err := checkWrites(req.GetSuccess()); err != nil {
		return err
	}
	_, err := checkWrites(req.GetFailure())
	return err
}
