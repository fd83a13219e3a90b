package statemachine

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Leases (docs/design.md, "Leases"): the home range (the one holding the lowest
// keys) keeps the record of every lease granted; any other range keeps the
// records of the leases its keys were attached to (the router attaches a
// lease to a range when a Put there names a lease the range does not know). A
// range keeps an index lease -> attached key (keyed by lease ID then user key,
// no range ID, so a range finds its keys of a lease by reading the lease's
// entries between its bounds). The index holds exactly the live keys whose
// current version carries the lease.
//
// Before a range is given a lease's record (TxnCommand.attach, with the Put
// that names the lease), the router registers the range's span with the lease
// on the home range (LeaseRegisterCommand); the home
// range's record keeps those spans and its own bounds at the grant. Revocation
// marks the lease on the home range (LeaseMarkCommand, after which
// registrations are refused), then revokes it on every range overlapping its
// spans (split-off children of those ranges included: a split copies the
// records), the home range last. An attach races with that: it carries a
// proof revision P taken before its registration, so the mark applied after
// P was issued, and every revocation, proposed after the mark, applies at a
// revision above P. Each range keeps the revision of the last revocation it
// applied (rangeState.leaseFloor) and refuses an attach with P at or below
// it: a lease's record never comes back to a range after its revocation.

// leaseRecord returns the range's record of a lease.
func (a *applier) leaseRecord(leaseID int64) (*tesserapb.LeaseRecord, bool, error) {
	v, found, err := getValue(a.b, metaLeaseKey(a.rangeID, leaseID))
	if err != nil || !found {
		return nil, false, err
	}
	rec := &tesserapb.LeaseRecord{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, false, fmt.Errorf("statemachine: corrupt lease record %d: %w", leaseID, err)
	}
	return rec, true, nil
}

func (a *applier) putLeaseRecord(rec *tesserapb.LeaseRecord) error {
	v, err := proto.Marshal(rec)
	if err != nil {
		return err
	}
	return a.b.Set(metaLeaseKey(a.rangeID, rec.GetId()), v, nil)
}

// leaseExists reports whether keys may attach to the lease here: the range
// has its record and no revocation of it has begun.
func (a *applier) leaseExists(leaseID int64) (bool, error) {
	if _, ok := a.attaching[leaseID]; ok {
		return true, nil
	}
	rec, found, err := a.leaseRecord(leaseID)
	return found && !rec.GetRevoking(), err
}

func (a *applier) applyLeaseGrant(g *tesserapb.LeaseGrantCommand) (*pb.LeaseGrantResponse, error) {
	if g.GetId() == 0 {
		return nil, errorf(ErrInvalidCommand, "lease grant without an ID")
	}
	_, found, err := a.leaseRecord(g.GetId())
	if err != nil {
		return nil, err
	}
	if found {
		return nil, errorf(ErrLeaseExists, "lease %d", g.GetId())
	}
	rec := &tesserapb.LeaseRecord{Id: g.GetId(), TtlSeconds: g.GetTtlSeconds()}
	if g.GetTrackSpans() {
		rec.SpansTracked = true
		rec.Spans = []*tesserapb.KeySpan{{Start: a.bounds.start, End: a.bounds.end}}
	}
	if err := a.putLeaseRecord(rec); err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{
		Header: &pb.ResponseHeader{Revision: a.state.currentRev},
		ID:     g.GetId(),
		TTL:    g.GetTtlSeconds(),
	}, nil
}

// checkAttaches checks a Txn's lease attachments (none is proved at or
// below the range's lease floor, none names a lease being revoked) and
// returns the records the range lacks, to be written once the Txn has
// applied; until then leaseExists counts them (applier.attaching).
func (a *applier) checkAttaches(attach []*tesserapb.LeaseAttach) (map[int64]*tesserapb.LeaseRecord, error) {
	var out map[int64]*tesserapb.LeaseRecord
	for _, c := range attach {
		if c.GetId() == 0 {
			return nil, errorf(ErrInvalidCommand, "lease attach without an ID")
		}
		if c.GetProofRevision() <= a.state.leaseFloor {
			return nil, errorf(ErrLeaseProofOld, "lease %d proved at revision %d, a lease was revoked here at %d", c.GetId(), c.GetProofRevision(), a.state.leaseFloor)
		}
		rec, found, err := a.leaseRecord(c.GetId())
		if err != nil {
			return nil, err
		}
		switch {
		case found && rec.GetRevoking():
			return nil, errorf(ErrLeaseNotFound, "lease %d is being revoked", c.GetId())
		case !found:
			if out == nil {
				out = map[int64]*tesserapb.LeaseRecord{}
			}
			out[c.GetId()] = &tesserapb.LeaseRecord{Id: c.GetId(), TtlSeconds: c.GetTtlSeconds()}
		}
	}
	return out, nil
}

// writeAttached writes the records a Txn's attachments gave the range.
func (a *applier) writeAttached(recs map[int64]*tesserapb.LeaseRecord) error {
	for _, rec := range recs {
		if err := a.putLeaseRecord(rec); err != nil {
			return err
		}
	}
	return nil
}

// applyLeaseMark marks a lease as being revoked (on the home range) and
// returns its record.
func (a *applier) applyLeaseMark(leaseID int64) (*tesserapb.LeaseRecord, error) {
	rec, found, err := a.leaseRecord(leaseID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, errorf(ErrLeaseNotFound, "lease %d", leaseID)
	}
	if rec.GetRevoking() {
		return rec, nil
	}
	rec.Revoking = true
	return rec, a.putLeaseRecord(rec)
}

// applyLeaseRegister adds a span to a lease's spans (on the home range)
// unless its revocation has begun, and returns its record.
func (a *applier) applyLeaseRegister(c *tesserapb.LeaseRegisterCommand) (*tesserapb.LeaseRecord, error) {
	rec, found, err := a.leaseRecord(c.GetId())
	if err != nil {
		return nil, err
	}
	if !found || rec.GetRevoking() {
		return nil, errorf(ErrLeaseNotFound, "lease %d", c.GetId())
	}
	if !rec.GetSpansTracked() {
		return rec, nil // revoked on every range anyway
	}
	rec.Spans = addSpan(rec.Spans, c.GetSpan())
	return rec, a.putLeaseRecord(rec)
}

// addSpan returns spans (sorted, disjoint, adjacent ones merged) with s
// added, likewise. An empty end is the end of the keyspace.
func addSpan(spans []*tesserapb.KeySpan, s *tesserapb.KeySpan) []*tesserapb.KeySpan {
	endAfter := func(a, b []byte) bool { // a > b as ends, empty = infinity
		return (len(a) == 0 && len(b) != 0) || (len(b) != 0 && bytes.Compare(a, b) > 0)
	}
	all := append(slices.Clone(spans), &tesserapb.KeySpan{Start: bytes.Clone(s.GetStart()), End: bytes.Clone(s.GetEnd())})
	slices.SortFunc(all, func(x, y *tesserapb.KeySpan) int { return bytes.Compare(x.GetStart(), y.GetStart()) })
	out := all[:1]
	for _, sp := range all[1:] {
		last := out[len(out)-1]
		// Overlapping or adjacent: last reaches sp's start.
		if len(last.GetEnd()) == 0 || bytes.Compare(last.GetEnd(), sp.GetStart()) >= 0 {
			if endAfter(sp.GetEnd(), last.GetEnd()) {
				last.End = sp.GetEnd()
			}
			continue
		}
		out = append(out, sp)
	}
	return out
}

// applyLeaseRevoke deletes every key of the range attached to the lease at
// rev, and the lease's record unless c.keep_record, and raises the range's
// lease floor to rev. A range without the lease's record (none of its keys
// ever attached to it) applies it too, for the floor, when c.without_record.
func (a *applier) applyLeaseRevoke(rev int64, c *tesserapb.LeaseRevokeCommand) (*pb.LeaseRevokeResponse, bool, error) {
	leaseID := c.GetId()
	if !c.GetWithoutRecord() {
		_, found, err := a.leaseRecord(leaseID)
		if err != nil {
			return nil, false, err
		}
		if !found {
			return nil, false, errorf(ErrLeaseNotFound, "lease %d", leaseID)
		}
	}
	keys, err := leaseKeys(a.b, leaseID, a.bounds)
	if err != nil {
		return nil, false, err
	}
	r, w := mvccReader{r: a.b}, mvccWriter{b: a.b, rev: rev, log: a.log}
	changed := false
	for _, k := range keys {
		prev, err := r.get(k, a.state.currentRev)
		if err != nil {
			return nil, false, err
		}
		if prev == nil {
			continue // the index only holds live keys; be forgiving anyway
		}
		if err := w.delete(k, prev); err != nil {
			return nil, false, err
		}
		changed = true
	}
	if !c.GetKeepRecord() {
		if err := a.b.Delete(metaLeaseKey(a.rangeID, leaseID), nil); err != nil {
			return nil, false, err
		}
	}
	a.state.leaseFloor = rev
	hdrRev := a.state.currentRev
	if changed {
		hdrRev = rev
	}
	return &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: hdrRev}}, changed, nil
}

// leaseKeys returns the keys in bnds attached to leaseID, sorted.
func leaseKeys(r pebble.Reader, leaseID int64, bnds bounds) ([][]byte, error) {
	lower, upper := leaseIndexBounds(leaseID, bnds.span())
	if upper != nil && bytes.Compare(lower, upper) >= 0 {
		return nil, nil
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer closeQuietly(it)
	var keys [][]byte
	for valid := it.First(); valid; valid = it.Next() {
		_, k, err := decodeLeaseIndexKey(it.Key())
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, it.Error()
}

// loadLeases reads a range's lease records, ordered by ID (as unsigned).
func loadLeases(r pebble.Reader, rangeID uint64) ([]*tesserapb.LeaseRecord, error) {
	var out []*tesserapb.LeaseRecord
	err := iterPrefix(r, metaKey(rangeID, metaLease), func(_, v []byte) error {
		rec := &tesserapb.LeaseRecord{}
		if err := proto.Unmarshal(v, rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

// iterPrefix calls fn with every key/value under prefix, in order.
func iterPrefix(r pebble.Reader, prefix []byte, fn func(k, v []byte) error) error {
	return iterSpan(r, prefix, prefixEnd(prefix), fn)
}

// iterSpan calls fn with every key/value in [lower, upper), in order.
func iterSpan(r pebble.Reader, lower, upper []byte, fn func(k, v []byte) error) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	for valid := it.First(); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			return err
		}
	}
	return it.Error()
}
