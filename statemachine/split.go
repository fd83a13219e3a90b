package statemachine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Splits (docs/design.md, "Splits"). A SplitCommand at index i of the parent's log
// makes every replica, in the batch that applies i:
//
//   - shrink the parent's bounds [start, end) to [start, splitKey) and
//     increment their generation;
//   - write the child's initial metadata: bounds [splitKey, end) at the
//     parent's new generation, state {appliedIndex 0, and the parent's
//     lastCmdRev, currentRev, compactedRev and leaseFloor}, a copy of the
//     parent's co-commits (cocommits.go), and a copy of every lease record
//     of the parent not being revoked (the child's keys may be attached to
//     any of them; the lease -> key index is global and read between
//     bounds, so it needs no copy).
//
// No data key moves: data and lease index keys carry no range ID, so the keys
// in [splitKey, end) simply become the child's. The child inherits the
// parent's revisions so that its revision rule (apply.go) refuses everything
// the parent would have refused for those keys, and reads below the parent's
// compaction keep failing there.
//
// Writing the child's metadata is the one place a range writes another
// range's metadata; the child has none yet (checked), and nobody else writes
// it until its replica is created from StoreOptions.OnSplit, after the batch
// has committed.
//
// A split carries no revision (like compact and barrier): it writes no key,
// and the child must inherit exactly the parent's lastCmdRev.

// applySplit validates and applies a split; see above.
func (a *applier) applySplit(s *tesserapb.SplitCommand) error {
	splitKey, childID := s.GetSplitKey(), s.GetNewRangeId()
	if bytes.Compare(splitKey, a.bounds.start) <= 0 || !a.bounds.containsKey(splitKey) {
		return errorf(ErrInvalidSplit, "split key %q, range %d is %s", splitKey, a.rangeID, a.bounds)
	}
	switch {
	case childID == 0:
		return errorf(ErrInvalidSplit, "no new range ID")
	case childID == a.rangeID:
		return errorf(ErrInvalidSplit, "new range ID %d is the range's own", childID)
	}
	// The ID must be free in this store. It is checked so that a bad command
	// can never overwrite a live range's metadata (and it reads the batch, so
	// two splits in one Update cannot take the same ID either). Range IDs
	// are allocated by the meta range, so on every replica the answer
	// is the same — provided the node never creates the child's replica
	// before the parent's replica here has applied the split (or recovered a
	// snapshot taken after it): a child created early, e.g. from a
	// descriptor, would make the split fail on this replica alone and the
	// replicas' bounds diverge. The node starts children from OnSplit only.
	taken, err := hasMeta(a.b, childID)
	if err != nil {
		return err
	}
	if taken {
		return errorf(ErrInvalidSplit, "new range ID %d already has state in this store", childID)
	}

	generation := a.bounds.generation + 1
	parent := bounds{start: a.bounds.start, end: bytes.Clone(splitKey), generation: generation}
	child := bounds{start: bytes.Clone(splitKey), end: a.bounds.end, generation: generation}
	childState := rangeState{
		lastCmdRev:   a.state.lastCmdRev,
		currentRev:   a.state.currentRev,
		compactedRev: a.state.compactedRev,
		leaseFloor:   a.state.leaseFloor,
	}
	// Collect the lease records before writing: an iterator over a batch
	// being written to is not required to see those writes, or not to.
	// Records of leases being revoked stay behind: no key may attach to
	// them, the revocation finds the child's keys by the lease index, and a
	// stale copy would refuse the lease if its ID were granted again.
	var leases [][2][]byte
	err = iterPrefix(a.b, metaKey(a.rangeID, metaLease), func(k, v []byte) error {
		rec := &tesserapb.LeaseRecord{}
		if err := proto.Unmarshal(v, rec); err != nil {
			return fmt.Errorf("statemachine: corrupt lease record under %q: %w", k, err)
		}
		if !rec.GetRevoking() {
			id := k[len(k)-8:]
			leases = append(leases, [2][]byte{bytes.Clone(id), bytes.Clone(v)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, kv := range leases {
		if err := a.b.Set(metaKey(childID, metaLease, kv[0]...), kv[1], nil); err != nil {
			return err
		}
	}
	if err := a.b.Set(metaKey(childID, metaState), childState.encode(), nil); err != nil {
		return err
	}
	if err := a.b.Set(metaKey(childID, metaBounds), child.encode(), nil); err != nil {
		return err
	}
	// The child's keys were the parent's, and so are the writes spanning
	// ranges they took part in.
	if c := a.state.coCommits; c != nil {
		if err := a.b.Set(metaKey(childID, metaCoCommits), c.encode(), nil); err != nil {
			return err
		}
	}
	if err := a.b.Set(metaKey(a.rangeID, metaBounds), parent.encode(), nil); err != nil {
		return err
	}
	a.bounds = parent
	a.splits = append(a.splits, childID)
	return nil
}

// String formats bounds for messages and tests: ["a", "m") gen 2.
func (b bounds) String() string {
	end := "∞"
	if b.end != nil {
		end = strconv.Quote(string(b.end))
	}
	return fmt.Sprintf("[%q, %s) gen %d", b.start, end, b.generation)
}

// endAfter reports whether end a (nil: unbounded) is beyond end b.
func endAfter(a, b []byte) bool {
	if a == nil {
		return b != nil
	}
	return b != nil && bytes.Compare(a, b) > 0
}

// minEnd returns the nearer of two ends (nil: unbounded).
func minEnd(a, b []byte) []byte {
	if endAfter(a, b) {
		return b
	}
	return a
}

// subtractBounds returns the parts of from that lie in none of holes, in key
// order. Generations are ignored (the results carry from's).
func subtractBounds(from bounds, holes []bounds) []bounds {
	out := []bounds{from}
	for _, h := range holes {
		var next []bounds
		for _, p := range out {
			// Left of the hole: [p.start, min(p.end, h.start)).
			if bytes.Compare(p.start, h.start) < 0 {
				left := bounds{start: p.start, end: minEnd(p.end, h.start), generation: p.generation}
				next = append(next, left)
			}
			// Right of the hole: [max(p.start, h.end), p.end).
			if h.end != nil && endAfter(p.end, h.end) {
				start := h.end
				if bytes.Compare(p.start, start) > 0 {
					start = p.start
				}
				next = append(next, bounds{start: start, end: p.end, generation: p.generation})
			}
		}
		out = next
	}
	return out
}

// storedRange is a range with metadata in the store, and its stored bounds.
type storedRange struct {
	rangeID uint64
	bounds  bounds
}

// storedRanges returns every range with metadata in r except the range
// except (0: none), ordered by range ID. It visits each range's metadata
// with a seek, not a scan of its lease records.
func storedRanges(r pebble.Reader, except uint64) ([]storedRange, error) {
	var out []storedRange
	err := forEachStoredRange(r, func(rangeID uint64) error {
		if rangeID == except {
			return nil
		}
		b, found, err := storedBounds(r, rangeID)
		if err == nil && found {
			out = append(out, storedRange{rangeID: rangeID, bounds: b})
		}
		return err
	})
	return out, err
}

// forEachStoredRange calls fn with the ID of every range that has any
// metadata in r, in ID order.
func forEachStoredRange(r pebble.Reader, fn func(rangeID uint64) error) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixMeta}, UpperBound: []byte{prefixMeta + 1}})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	for valid := it.First(); valid; {
		k := it.Key()
		if len(k) < 1+8 {
			return errBadKey
		}
		rangeID := binary.BigEndian.Uint64(k[1:9])
		if err := fn(rangeID); err != nil {
			return err
		}
		if rangeID == math.MaxUint64 {
			break
		}
		valid = it.SeekGE(metaPrefix(rangeID + 1))
	}
	return it.Error()
}
