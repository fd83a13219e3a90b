package statemachine

import (
	"github.com/cockroachdb/pebble/v2"
)

// CountLiveKeys counts the user keys whose newest stored version is not a
// deletion, over every range this node's store holds: etcd's "total number
// of keys" for this node. It reads a snapshot and touches each key's newest
// version only (one seek past the older ones), so its cost grows with the
// number of keys, not of versions.
func (s *Store) CountLiveKeys() (int64, error) {
	snap := s.db.NewSnapshot()
	defer closeQuietly(snap)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixData}, UpperBound: []byte{prefixData + 1}})
	if err != nil {
		return 0, err
	}
	defer closeQuietly(it)
	var n int64
	past := make([]byte, 0, 64)
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < 1+2+revSuffixLen {
			return n, errBadKey
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return n, err
		}
		if len(v) > 0 {
			n++
		}
		past = append(past[:0], dataVersionsPrefix(k)...)
		past[len(past)-1] = escTerm + 1
		ok = it.SeekGE(past)
	}
	return n, it.Error()
}
