package statemachine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// rangeState is a range's scalar metadata, stored under metaState in the same
// batch as the data each Update writes.
type rangeState struct {
	// appliedIndex is the Raft index of the last entry applied.
	appliedIndex uint64
	// lastCmdRev is the highest Command.revision applied successfully. A
	// command with revision r > 0 is refused (ErrStaleRevision) unless
	// r > max(lastCmdRev, currentRev).
	lastCmdRev int64
	// currentRev is etcd's revision for this range: the last revision at which
	// a key was written, or a compaction's above it; 1 for a range that never
	// wrote (as etcd's empty store). It only advances, and only to a
	// command's revision or a compaction's.
	currentRev int64
	// compactedRev is the revision of the last compaction, 0 if none. Reads
	// below it fail with ErrCompacted. compactedRev <= currentRev.
	compactedRev int64
	// leaseFloor is the revision of the last lease revocation applied (0 if
	// none): a lease attachment (TxnCommand.attach) proved at or below it
	// is refused, since the lease it names may be one revoked since
	// (lease.go).
	leaseFloor int64
	// leadershipTerm is the highest term of a leadership barrier applied
	// (BarrierCommand.leadership), 0 if none: any command of a lower term is
	// refused (apply.go).
	leadershipTerm uint64
	// hold is the write spanning ranges holding this range, nil if none.
	// It is stored apart from the rest (metaHold), and replaced, never
	// changed in place.
	hold *tesserapb.TxnHold
	// coCommits are the ranges this one committed writes spanning ranges
	// together with (cocommits.go), stored apart (metaCoCommits).
	coCommits *coCommits
}

func initialState() rangeState { return rangeState{currentRev: 1} }

// stateEncodingVersion 2 added leaseFloor, 4 leadershipTerm; versions 1
// and 2 (without them, so 0) are still read. Version 3 was never written by
// a release and is refused.
const stateEncodingVersion = 4

// stateFields is how many 8-byte fields each readable state encoding has.
var stateFields = map[byte]int{1: 4, 2: 5, 4: 6}

func (s rangeState) encode() []byte {
	b := []byte{stateEncodingVersion}
	b = binary.BigEndian.AppendUint64(b, s.appliedIndex)
	b = binary.BigEndian.AppendUint64(b, uint64(s.lastCmdRev))
	b = binary.BigEndian.AppendUint64(b, uint64(s.currentRev))
	b = binary.BigEndian.AppendUint64(b, uint64(s.compactedRev))
	b = binary.BigEndian.AppendUint64(b, uint64(s.leaseFloor))
	b = binary.BigEndian.AppendUint64(b, s.leadershipTerm)
	return b
}

func decodeState(b []byte) (rangeState, error) {
	var fields int
	if len(b) > 0 {
		fields = stateFields[b[0]]
	}
	if fields == 0 || len(b) != 1+8*fields {
		return rangeState{}, fmt.Errorf("statemachine: malformed range state (%d bytes)", len(b))
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[1+8*i:]) }
	st := rangeState{
		appliedIndex: u(0),
		lastCmdRev:   int64(u(1)),
		currentRev:   int64(u(2)),
		compactedRev: int64(u(3)),
	}
	if b[0] >= 2 {
		st.leaseFloor = int64(u(4))
	}
	if b[0] >= 4 {
		st.leadershipTerm = u(5)
	}
	return st, nil
}

// keySpan is a set of user keys: the single key start (point), or
// [start, end) with end == nil meaning "to the end of the keyspace".
type keySpan struct {
	start []byte
	end   []byte
	point bool
}

// spanOf interprets etcd's key/range_end pair: empty range_end is the single
// key, "\x00" is every key >= key, anything else is [key, range_end).
func spanOf(key, rangeEnd []byte) keySpan {
	switch {
	case len(rangeEnd) == 0:
		return keySpan{start: key, point: true}
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return keySpan{start: key}
	default:
		return keySpan{start: key, end: rangeEnd}
	}
}

func (s keySpan) contains(k []byte) bool {
	if s.point {
		return bytes.Equal(k, s.start)
	}
	return bytes.Compare(k, s.start) >= 0 && (s.end == nil || bytes.Compare(k, s.end) < 0)
}

// bounds are a range's keys: [start, end), end == nil meaning unbounded,
// and the generation of that pair.
//
// Invariants (enforced by applySplit, the only writer besides snapshot
// recovery):
//   - start < end when end != nil; bounds only ever shrink, at the end
//     (a split keeps [start, splitKey) and gives [splitKey, end) to a child).
//   - generation starts at 1 (a range without a bounds record, or one written
//     before generations existed, has generation 1) and is incremented by
//     every split of the range. The child of a split starts at the parent's
//     new generation, not at 1, so that of two overlapping bounds ever
//     published (by whichever ranges) the one with the higher generation is
//     the newer: a descriptor cache can resolve overlaps without knowing the
//     split history.
type bounds struct {
	start      []byte
	end        []byte
	generation uint64
}

// wholeKeyspace is the bounds of a range that never split and never
// received a snapshot.
func wholeKeyspace() bounds { return bounds{start: []byte{}, generation: 1} }

func (b bounds) span() keySpan { return keySpan{start: b.start, end: b.end} }

func (b bounds) containsKey(k []byte) bool {
	return bytes.Compare(k, b.start) >= 0 && (b.end == nil || bytes.Compare(k, b.end) < 0)
}

// containsSpan reports whether every key of s lies within b. An empty span
// ([k, e) with e <= k) holds no key and is contained in any bounds.
func (b bounds) containsSpan(s keySpan) bool {
	if s.point {
		return b.containsKey(s.start)
	}
	if s.end != nil && bytes.Compare(s.end, s.start) <= 0 {
		return true // no key: any range may answer for it
	}
	if bytes.Compare(s.start, b.start) < 0 {
		return false
	}
	if b.end == nil {
		return true
	}
	if s.end == nil {
		return false
	}
	return bytes.Compare(s.end, b.end) <= 0
}

// Bounds encodings: version 1 (before generations; decoded as generation 1)
// is 1 uvarint(len start) start (0 | 1 end); version 2, the one written, is
// 2 uvarint(generation) followed by version 1's body.
const (
	boundsEncodingV1      = 1
	boundsEncodingVersion = 2
)

func (b bounds) encode() []byte {
	out := []byte{boundsEncodingVersion}
	out = binary.AppendUvarint(out, b.generation)
	out = binary.AppendUvarint(out, uint64(len(b.start)))
	out = append(out, b.start...)
	if b.end == nil {
		return append(out, 0)
	}
	out = append(out, 1)
	return append(out, b.end...)
}

func decodeBounds(v []byte) (bounds, error) {
	bad := fmt.Errorf("statemachine: malformed range bounds")
	if len(v) < 1 {
		return bounds{}, bad
	}
	generation, rest := uint64(1), v[1:]
	switch v[0] {
	case boundsEncodingV1:
	case boundsEncodingVersion:
		g, w := binary.Uvarint(rest)
		if w <= 0 {
			return bounds{}, bad
		}
		generation, rest = g, rest[w:]
	default:
		return bounds{}, bad
	}
	n, w := binary.Uvarint(rest)
	if w <= 0 || uint64(len(rest)-w) < n+1 {
		return bounds{}, bad
	}
	rest = rest[w:]
	b := bounds{start: bytes.Clone(rest[:n]), generation: generation}
	switch rest[n] {
	case 0:
	case 1:
		b.end = append([]byte{}, rest[n+1:]...)
	default:
		return bounds{}, bad
	}
	return b, nil
}

// getValue reads key from r; found is false when it is absent.
func getValue(r pebble.Reader, key []byte) (value []byte, found bool, err error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closeQuietly(closer)
	return bytes.Clone(v), true, nil
}

func closeQuietly(c io.Closer) { _ = c.Close() }

// loadMeta reads rangeID's state and bounds from r, with the defaults of a
// range that never applied anything (whole keyspace).
func loadMeta(r pebble.Reader, rangeID uint64) (rangeState, bounds, error) {
	st := initialState()
	v, found, err := getValue(r, metaKey(rangeID, metaState))
	if err != nil {
		return st, bounds{}, err
	}
	if found {
		if st, err = decodeState(v); err != nil {
			return st, bounds{}, err
		}
	}
	bnds := wholeKeyspace()
	v, found, err = getValue(r, metaKey(rangeID, metaBounds))
	if err != nil {
		return st, bounds{}, err
	}
	if found {
		if bnds, err = decodeBounds(v); err != nil {
			return st, bounds{}, err
		}
	}
	if st.hold, err = loadHold(r, rangeID); err != nil {
		return st, bounds{}, err
	}
	st.coCommits, err = loadCoCommits(r, rangeID)
	return st, bnds, err
}

// loadCoCommits reads rangeID's co-commit record from r, nil if none.
func loadCoCommits(r pebble.Reader, rangeID uint64) (*coCommits, error) {
	v, found, err := getValue(r, metaKey(rangeID, metaCoCommits))
	if err != nil || !found {
		return nil, err
	}
	c, err := decodeCoCommits(v)
	if err != nil {
		return nil, fmt.Errorf("statemachine: range %d: %w", rangeID, err)
	}
	return c, nil
}

// loadHold reads rangeID's hold from r, nil if none.
func loadHold(r pebble.Reader, rangeID uint64) (*tesserapb.TxnHold, error) {
	v, found, err := getValue(r, metaKey(rangeID, metaHold))
	if err != nil || !found {
		return nil, err
	}
	h := &tesserapb.TxnHold{}
	if err := proto.Unmarshal(v, h); err != nil {
		return nil, fmt.Errorf("statemachine: range %d: malformed hold: %w", rangeID, err)
	}
	return h, nil
}

// writeHold records h as rangeID's hold in b (deletes it when nil).
func writeHold(b *pebble.Batch, rangeID uint64, h *tesserapb.TxnHold) error {
	if h == nil {
		return b.Delete(metaKey(rangeID, metaHold), nil)
	}
	v, err := proto.Marshal(h)
	if err != nil {
		return err
	}
	return b.Set(metaKey(rangeID, metaHold), v, nil)
}

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

// hasMeta reports whether rangeID has any metadata in r: a range that was
// ever opened and applied something, recovered a snapshot, or was created by
// a split.
func hasMeta(r pebble.Reader, rangeID uint64) (bool, error) {
	p := metaPrefix(rangeID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return false, err
	}
	defer closeQuietly(it)
	found := it.First()
	return found, it.Error()
}

// storedBounds returns the bounds rangeID has in r: its bounds record, the
// whole keyspace when it has metadata but no bounds record (a range that
// never split nor recovered), found false when it has no metadata at all.
func storedBounds(r pebble.Reader, rangeID uint64) (b bounds, found bool, err error) {
	v, found, err := getValue(r, metaKey(rangeID, metaBounds))
	if err != nil {
		return bounds{}, false, err
	}
	if found {
		b, err = decodeBounds(v)
		return b, err == nil, err
	}
	if found, err = hasMeta(r, rangeID); err != nil || !found {
		return bounds{}, false, err
	}
	return wholeKeyspace(), true, nil
}
