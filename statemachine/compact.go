package statemachine

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Compaction at C (etcd's semantics; docs/design.md, "Compaction"): C at
// or below the last compaction is ErrCompacted; otherwise compactedRev
// becomes C, reads below C fail with ErrCompacted from then on, and per key
// every version older than the newest one <= C is deleted, and that one too
// when it is a tombstone. The deletes
// go into the Update's batch with the new compactedRev.
//
// C may be above this range's last write: revisions are global, and other
// ranges wrote the ones in between. Whether C is in the future is decided by
// the router against the oracle; the range leader raises its fence to C
// before proposing, and from then on this range refuses any write at or
// below C (the revision rule in apply.go counts compactedRev). The range's
// revision becomes C then, keeping compactedRev <= currentRev.

// applyCompact records the compaction at compactRev and removes the versions
// it makes unreachable.
func (a *applier) applyCompact(compactRev int64) (*pb.CompactionResponse, error) {
	if compactRev <= a.state.compactedRev {
		return nil, errorf(ErrCompacted, "compact at %d, compacted at %d", compactRev, a.state.compactedRev)
	}
	if err := compact(a.b, a.bounds.span(), compactRev); err != nil {
		return nil, err
	}
	a.state.compactedRev = compactRev
	// Above the range's last write, the state is the state at compactRev
	// (no write at or below it can apply any more): reads at the current
	// revision must not be below the compaction.
	a.state.currentRev = max(a.state.currentRev, compactRev)
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: a.state.currentRev}}, nil
}

// compact removes the versions that compaction at compactRev makes
// unreachable from the keys in s.
func compact(b *pebble.Batch, s keySpan, compactRev int64) error {
	lower, upper := dataSpanBounds(s)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	var curPrefix []byte
	kept := false
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if p := dataVersionsPrefix(k); !bytes.Equal(p, curPrefix) {
			curPrefix = bytes.Clone(p)
			kept = false
		}
		if dataKeyRev(k) > compactRev {
			continue
		}
		if kept {
			if err := deleteVersion(b, k); err != nil {
				return err
			}
			continue
		}
		kept = true
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(v) == 0 {
			if err := deleteVersion(b, k); err != nil {
				return err
			}
		}
	}
	return it.Error()
}

// deleteVersion deletes the version under data key k and its revision
// index entry.
func deleteVersion(b *pebble.Batch, k []byte) error {
	userKey, rev, err := decodeDataKey(k)
	if err != nil {
		return err
	}
	if err := b.Delete(bytes.Clone(k), nil); err != nil {
		return err
	}
	return b.Delete(revIndexKey(rev, userKey), nil)
}
