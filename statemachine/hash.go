package statemachine

import (
	"bytes"
	"hash/crc32"
)

// crc32c is the table of HashKV's checksums.
var crc32c = crc32.MakeTable(crc32.Castagnoli)

// HashKV returns a checksum of the range's key-value history as of revision
// rev: every stored version at or below rev, less what this replica's
// compaction removes (each key's versions at or below the compacted
// revision but its newest, which goes too when it is a deletion). Replicas
// of a range that have applied the same commands agree; etcd's HashKV
// compares members the same way. rev below the compacted revision is
// ErrCompacted.
func (v *View) HashKV(rev int64) (uint32, error) {
	if rev < v.state.compactedRev {
		return 0, ErrCompacted
	}
	compacted := v.state.compactedRev
	var (
		sum     uint32
		current []byte // the versions prefix of the key being read
		oldSeen bool   // a version of it at or below the compaction was met
	)
	lower, upper := dataSpanBounds(v.bounds.span())
	err := iterSpan(v.snap.snap, lower, upper, func(k, val []byte) error {
		if prefix := dataVersionsPrefix(k); !bytes.Equal(prefix, current) {
			current, oldSeen = append(current[:0], prefix...), false
		}
		r := dataKeyRev(k)
		if r > rev {
			return nil
		}
		if r <= compacted {
			if oldSeen {
				return nil
			}
			oldSeen = true
			if len(val) == 0 {
				return nil
			}
		}
		sum = crc32.Update(sum, crc32c, k)
		sum = crc32.Update(sum, crc32c, val)
		return nil
	})
	return sum, err
}
