package statemachine

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// coCommits records, for every other range this range committed a write
// spanning ranges together with, the revision of the last such write. A
// range whose floor is below that revision has not applied that write yet
// (it is still held for it, or has not applied the hold), while this range
// has: a serializable read of both would show part of the write, and reads
// them both below the revision instead (router). A range's entries only
// grow (one per range it ever wrote together with; ranges never merge),
// are copied to a split's child, and travel in snapshots as a metadata
// record.
//
// A value is never changed in place: with replaces it, so that Update can
// tell by the pointer that it must write the record.
type coCommits struct {
	ids  []uint64 // sorted
	revs []int64
}

// with returns c with rev recorded for every range of ids but self.
func (c *coCommits) with(self uint64, ids []uint64, rev int64) *coCommits {
	out := &coCommits{}
	if c != nil {
		out.ids, out.revs = slices.Clone(c.ids), slices.Clone(c.revs)
	}
	for _, id := range ids {
		if id == self {
			continue
		}
		i, found := slices.BinarySearch(out.ids, id)
		if found {
			out.revs[i] = max(out.revs[i], rev)
			continue
		}
		out.ids = slices.Insert(out.ids, i, id)
		out.revs = slices.Insert(out.revs, i, rev)
	}
	return out
}

// revision returns the revision of the last write committed together with
// range id, 0 if none.
func (c *coCommits) revision(id uint64) int64 {
	if c == nil {
		return 0
	}
	if i, found := slices.BinarySearch(c.ids, id); found {
		return c.revs[i]
	}
	return 0
}

// encode: BE(id) BE(rev) for each entry, in ID order.
func (c *coCommits) encode() []byte {
	b := make([]byte, 0, 16*len(c.ids))
	for i, id := range c.ids {
		b = binary.BigEndian.AppendUint64(b, id)
		b = binary.BigEndian.AppendUint64(b, uint64(c.revs[i]))
	}
	return b
}

func decodeCoCommits(b []byte) (*coCommits, error) {
	if len(b)%16 != 0 {
		return nil, fmt.Errorf("statemachine: malformed co-commit record (%d bytes)", len(b))
	}
	c := &coCommits{}
	for ; len(b) > 0; b = b[16:] {
		id := binary.BigEndian.Uint64(b)
		if n := len(c.ids); n > 0 && id <= c.ids[n-1] {
			return nil, fmt.Errorf("statemachine: co-commit record not in range ID order")
		}
		c.ids = append(c.ids, id)
		c.revs = append(c.revs, int64(binary.BigEndian.Uint64(b[8:])))
	}
	return c, nil
}
