package statemachine

// MidKey returns a key that cuts the range's live data, as of the view's
// revision, into two halves by bytes (keys plus values): splitting there gives
// two ranges of about the same size. It returns nil when the range holds fewer
// than two keys, since no split key would leave both sides non-empty. It reads
// the range twice; callers run it only for a range already over its size
// limit.
func (v *View) MidKey() ([]byte, error) {
	span := v.bounds.span()
	rev := v.state.currentRev
	var total int64
	keys := 0
	err := v.reader().scan(span, rev, func(userKey, value []byte) (bool, error) {
		total += int64(len(userKey) + len(value))
		keys++
		return true, nil
	})
	if err != nil || keys < 2 {
		return nil, err
	}
	var (
		seen int64
		mid  []byte
		n    int
	)
	err = v.reader().scan(span, rev, func(userKey, value []byte) (bool, error) {
		n++
		// The first key stays on the left: a split at the range's first key
		// would leave the left side empty.
		if n > 1 && seen >= total/2 {
			mid = userKey
			return false, nil
		}
		seen += int64(len(userKey) + len(value))
		return true, nil
	})
	return mid, err
}
