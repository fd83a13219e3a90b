package statemachine

import (
	"encoding/binary"

	"github.com/cockroachdb/pebble/v2"
)

// SizeBytes estimates the bytes the range's data takes on disk (Pebble's
// sstables holding its keys; data still in the memtable is not counted).
func (r *RangeSM) SizeBytes() int64 {
	start, end := r.Bounds()
	lower, upper := dataSpanBounds(keySpan{start: start, end: end})
	n, err := r.store.db.EstimateDiskUsage(lower, upper)
	if err != nil {
		return 0
	}
	return int64(n)
}

// RangeIDs lists the ranges that have state in the store (the ones this node
// has replicas of, including those created by splits), in ID order.
func (s *Store) RangeIDs() ([]uint64, error) {
	var ids []uint64
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixMeta}, UpperBound: []byte{prefixMeta + 1}})
	if err != nil {
		return nil, err
	}
	defer closeQuietly(it)
	for valid := it.First(); valid; {
		k := it.Key()
		if len(k) < 1+8 {
			return nil, errBadKey
		}
		id := binary.BigEndian.Uint64(k[1:9])
		if _, found, err := getValue(s.db, metaKey(id, metaState)); err != nil {
			return nil, err
		} else if found {
			ids = append(ids, id)
		}
		// Jump to the next range's metadata.
		valid = it.SeekGE(metaPrefix(id + 1))
	}
	return ids, it.Error()
}
