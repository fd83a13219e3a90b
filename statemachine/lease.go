package statemachine

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Leases: a range keeps the records of the leases its keys may attach to
// (under its metadata) and an index lease -> attached key (keyed by lease ID
// then user key, no range ID, so a range finds its keys of a lease by
// reading the lease's entries between its bounds). The index holds exactly
// the live keys whose current version carries the lease.

func (a *applier) leaseExists(leaseID int64) (bool, error) {
	_, found, err := getValue(a.b, metaLeaseKey(a.rangeID, leaseID))
	return found, err
}

func (a *applier) applyLeaseGrant(g *tesserapb.LeaseGrantCommand) (*pb.LeaseGrantResponse, error) {
	if g.GetId() == 0 {
		return nil, errorf(ErrInvalidCommand, "lease grant without an ID")
	}
	found, err := a.leaseExists(g.GetId())
	if err != nil {
		return nil, err
	}
	if found {
		return nil, errorf(ErrLeaseExists, "lease %d", g.GetId())
	}
	v, err := proto.Marshal(&tesserapb.LeaseRecord{Id: g.GetId(), TtlSeconds: g.GetTtlSeconds()})
	if err != nil {
		return nil, err
	}
	if err := a.b.Set(metaLeaseKey(a.rangeID, g.GetId()), v, nil); err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{
		Header: &pb.ResponseHeader{Revision: a.state.currentRev},
		ID:     g.GetId(),
		TTL:    g.GetTtlSeconds(),
	}, nil
}

// applyLeaseRevoke deletes every key attached to the lease at rev, then the
// lease record.
func (a *applier) applyLeaseRevoke(rev, leaseID int64) (*pb.LeaseRevokeResponse, bool, error) {
	found, err := a.leaseExists(leaseID)
	if err != nil {
		return nil, false, err
	}
	if !found {
		return nil, false, errorf(ErrLeaseNotFound, "lease %d", leaseID)
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
	if err := a.b.Delete(metaLeaseKey(a.rangeID, leaseID), nil); err != nil {
		return nil, false, err
	}
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
