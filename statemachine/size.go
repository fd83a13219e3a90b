package statemachine

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
	err := forEachStoredRange(s.db, func(rangeID uint64) error {
		_, found, err := getValue(s.db, metaKey(rangeID, metaState))
		if err == nil && found {
			ids = append(ids, rangeID)
		}
		return err
	})
	return ids, err
}
