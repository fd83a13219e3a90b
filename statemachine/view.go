package statemachine

import (
	"math"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// View is one consistent point-in-time read view of a range: a Pebble
// snapshot, and the range's metadata read from that same snapshot. It is safe
// for concurrent use and concurrent with Update. Close it when done.
type View struct {
	// snap is the view's hold on a Pebble snapshot (shared with the other
	// views opened since the store's last commit); Close releases it.
	snap    *sharedSnapshot
	store   *Store
	rangeID uint64
	state   rangeState
	bounds  bounds
	// counts is the node's count cache (countcache.go).
	counts *countCache

	closeOnce sync.Once
}

// Close releases the view's Pebble snapshot.
func (v *View) Close() {
	v.closeOnce.Do(func() {
		v.snap.release()
		v.store.views.closed(v.rangeID)
	})
}

// Revision is etcd's current revision for this range: the last revision at
// which a key was written, 1 for a range that never wrote.
func (v *View) Revision() int64 { return v.state.currentRev }

// Floor is the revision under which the range has applied every command
// it ever will (see Applied.Floor): at or above the revision of a write
// spanning ranges exactly when the range has applied the write's commit,
// if it took part.
func (v *View) Floor() int64 { return v.state.floor() }

// CoCommits returns, for every range this one committed a write spanning
// ranges together with, the revision of the last such write (ids sorted).
// The slices are the view's own; the caller must not change them.
func (v *View) CoCommits() (ids []uint64, revs []int64) {
	if c := v.state.coCommits; c != nil {
		return c.ids, c.revs
	}
	return nil, nil
}

// CompactRevision is the revision of the last compaction, 0 if none.
func (v *View) CompactRevision() int64 { return v.state.compactedRev }

// AppliedIndex is the Raft index of the last entry applied.
func (v *View) AppliedIndex() uint64 { return v.state.appliedIndex }

// LastCommandRevision is the highest command revision applied: a command
// must carry a revision above max(LastCommandRevision, Revision).
func (v *View) LastCommandRevision() int64 { return v.state.lastCmdRev }

// Bounds returns the range's bounds as of the view; end nil is unbounded.
func (v *View) Bounds() (start, end []byte) { return v.bounds.start, v.bounds.end }

// Generation is the generation of the range's bounds as of the view; see
// RangeSM.Generation.
func (v *View) Generation() uint64 { return v.bounds.generation }

// AssumeClosed makes every revision up to closedRev readable in this view,
// and Revision() report at least closedRev. The caller (the range leader)
// vouches that no write at or below closedRev can still be applied to this
// range: it raised its fence to closedRev and every proposal at or below it
// has been applied or has failed. The range's state is then the state at
// closedRev even when its own last write is older.
//
// A range held by a write spanning ranges (TxnHoldCommand) at or below
// closedRev cannot vouch for it: that write commits later at a revision
// above the hold's, perhaps at or below closedRev. AssumeClosed then
// changes nothing and returns ErrRangeHeld; the caller tries again once
// the hold has ended.
func (v *View) AssumeClosed(closedRev int64) error {
	if h := v.state.hold; h != nil && closedRev >= h.GetRevision() {
		return errorf(ErrRangeHeld, "held since revision %d, asked to close %d", h.GetRevision(), closedRev)
	}
	v.state.currentRev = max(v.state.currentRev, closedRev)
	return nil
}

func (v *View) reader() mvccReader { return mvccReader{r: v.snap.snap} }

func (v *View) checkSpan(key, rangeEnd []byte) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	if !v.bounds.containsSpan(spanOf(key, rangeEnd)) {
		return errorf(ErrWrongRange, "key %q range_end %q", key, rangeEnd)
	}
	return nil
}

// Range answers req as etcd would (see range.go). The response's Header is
// nil: the caller fills it.
func (v *View) Range(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := v.checkSpan(req.Key, req.RangeEnd); err != nil {
		return nil, err
	}
	return executeRange(v.reader(), req, v.state.currentRev, v.state.compactedRev, v.counts)
}

// RangeWire answers req as Range does, with the kvs in wire format (see
// WireKVs); req must be one WireRangeable accepts.
func (v *View) RangeWire(req *pb.RangeRequest) (*WireRange, error) {
	if err := v.checkSpan(req.Key, req.RangeEnd); err != nil {
		return nil, err
	}
	return executeRangeWire(v.reader(), req, v.state.currentRev, v.state.compactedRev, v.counts)
}

// RangeStreamWire streams a request WireRangeable accepts, in wire format
// (as RangeWire's kvs): before each kv it calls next, and appends the kv to
// the WireKVs next returns, so the caller cuts the stream into messages
// wherever it likes. It returns count and more as Range would; an error from
// next stops the stream and is returned.
func (v *View) RangeStreamWire(req *pb.RangeRequest, next func() (*WireKVs, error)) (count int64, more bool, err error) {
	if err := v.checkSpan(req.Key, req.RangeEnd); err != nil {
		return 0, false, err
	}
	return streamScan(v.reader(), req, v.state.currentRev, v.state.compactedRev, math.MaxInt, func(k, val []byte) error {
		w, err := next()
		if err != nil {
			return err
		}
		w.addStored(k, val)
		return nil
	}, func() error { return nil })
}

// RangeStream calls emit with successive chunks (at most chunkSize kvs each;
// chunkSize <= 0 means a default) of exactly what Range would return for req,
// in order, and returns count and more as Range would. With the default
// ordering and no revision filters nothing is materialised beyond one chunk;
// otherwise (sorting and filtering need the whole result) the result is built
// first. emit may keep the chunk; an error from emit stops the stream and is
// returned.
func (v *View) RangeStream(req *pb.RangeRequest, chunkSize int, emit func([]*mvccpb.KeyValue) error) (count int64, more bool, err error) {
	if err := v.checkSpan(req.Key, req.RangeEnd); err != nil {
		return 0, false, err
	}
	return streamRange(v.reader(), req, v.state.currentRev, v.state.compactedRev, chunkSize, emit)
}

// Lease returns lease id's record and the keys of this range attached to it,
// sorted; ErrLeaseNotFound when the range has no such lease or its
// revocation has begun.
func (v *View) Lease(id int64) (*tesserapb.LeaseRecord, [][]byte, error) {
	val, found, err := getValue(v.snap.snap, metaLeaseKey(v.rangeID, id))
	if err != nil {
		return nil, nil, err
	}
	if !found {
		return nil, nil, errorf(ErrLeaseNotFound, "lease %d", id)
	}
	rec := &tesserapb.LeaseRecord{}
	if err := unmarshal(val, rec); err != nil {
		return nil, nil, err
	}
	if rec.GetRevoking() {
		return nil, nil, errorf(ErrLeaseNotFound, "lease %d is being revoked", id)
	}
	keys, err := leaseKeys(v.snap.snap, id, v.bounds)
	if err != nil {
		return nil, nil, err
	}
	return rec, keys, nil
}

// Leases returns every lease record of the range (those being revoked too),
// ordered by ID as an unsigned number.
func (v *View) Leases() ([]*tesserapb.LeaseRecord, error) {
	return loadLeases(v.snap.snap, v.rangeID)
}
