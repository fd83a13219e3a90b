package statemachine

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// History returns the events of every write to keys of etcd's interval [key,
// rangeEnd) at revisions fromRev..toRev, in revision order (one revision's
// events sorted by key, as Applied has them), each PUT or DELETE with the
// key's previous version as PrevKv when that version is live and still
// stored. It reads one snapshot of the node's store, across ranges: the
// caller makes sure first that every range holding keys of the interval has
// applied every command at or below toRev (their Applied floors).
//
// It gathers at most maxEvents events and about HistoryWindowBytes of keys
// and values (more only when one revision alone has more): when the window
// holds more it stops at a revision boundary and returns the last revision
// covered, below toRev; otherwise toRev.
// ErrCompacted when a range holding keys of the interval has compacted above
// fromRev (etcd refuses a watch that starts below the compacted revision).
func (s *Store) History(key, rangeEnd []byte, fromRev, toRev int64, maxEvents int) (events []*mvccpb.Event, coveredTo int64, err error) {
	if len(key) == 0 {
		return nil, 0, ErrEmptyKey
	}
	snap := s.db.NewSnapshot()
	defer closeQuietly(snap)
	span := spanOf(key, rangeEnd)
	compacted, err := compactedOver(snap, span)
	if err != nil {
		return nil, 0, err
	}
	if fromRev < compacted {
		return nil, 0, &CompactedError{CompactRevision: compacted}
	}
	if toRev < fromRev {
		return nil, toRev, nil
	}
	h := historyScan{fromRev: fromRev, toRev: toRev, max: max(maxEvents, 1), maxBytes: HistoryWindowBytes}
	if s.historyUsesIndex(span, fromRev, toRev) {
		if err := h.scanIndex(snap, span); err != nil {
			return nil, 0, err
		}
		return h.events, h.toRev, nil
	}
	if err := h.scan(snap, span); err != nil {
		return nil, 0, err
	}
	h.trim()
	return h.events, h.toRev, nil
}

// HistoryWindowBytes bounds what one History call gathers (keys and values),
// beyond one revision: watchers catching up and range feeds read history a
// window at a time, and a window of large values must stay small however
// many read at once.
const HistoryWindowBytes = 4 << 20

// CompactedError is History's answer for a window that starts below a
// compaction: errors.Is(err, ErrCompacted), and it says the compacted
// revision, which etcd's watch reports.
type CompactedError struct{ CompactRevision int64 }

func (e *CompactedError) Error() string {
	return fmt.Sprintf("%v (compacted at %d)", ErrCompacted, e.CompactRevision)
}

// Is makes errors.Is(err, ErrCompacted) hold.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// CompactedRevision returns the highest compacted revision of the ranges
// holding keys of etcd's interval [key, rangeEnd).
func (s *Store) CompactedRevision(key, rangeEnd []byte) (int64, error) {
	snap := s.db.NewSnapshot()
	defer closeQuietly(snap)
	return compactedOver(snap, spanOf(key, rangeEnd))
}

// compactedOver returns the highest compacted revision of the stored ranges
// whose bounds overlap span.
func compactedOver(r pebble.Reader, span keySpan) (int64, error) {
	ranges, err := storedRanges(r, 0)
	if err != nil {
		return 0, err
	}
	var compacted int64
	for _, sr := range ranges {
		if !sr.bounds.overlaps(span) {
			continue
		}
		st, _, err := loadMeta(r, sr.rangeID)
		if err != nil {
			return 0, err
		}
		compacted = max(compacted, st.compactedRev)
	}
	return compacted, nil
}

// overlaps reports whether some key of s lies within b.
func (b bounds) overlaps(s keySpan) bool {
	if s.point {
		return b.containsKey(s.start)
	}
	if s.end != nil && bytes.Compare(s.end, s.start) <= 0 {
		return false // empty
	}
	if b.end != nil && bytes.Compare(s.start, b.end) >= 0 {
		return false
	}
	return s.end == nil || bytes.Compare(s.end, b.start) > 0
}

// historyScan gathers the events of a window of revisions, lowering toRev
// when it has gathered too many or too many bytes.
type historyScan struct {
	fromRev, toRev int64
	max, maxBytes  int
	events         []*mvccpb.Event
	bytes          int // EventBytes of events
}

func (h *historyScan) scan(r pebble.Reader, span keySpan) error {
	lower, upper := dataSpanBounds(span)
	if bytes.Compare(lower, upper) >= 0 {
		return nil
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	valid := it.First()
	for valid {
		userKey, rev, err := decodeDataKey(it.Key())
		if err != nil {
			return err
		}
		if rev > h.toRev {
			valid = it.SeekGE(dataKey(userKey, h.toRev))
			continue
		}
		prefix := dataKeyPrefix(userKey)
		// Versions of userKey from the newest at or below toRev, older and
		// older: each event's PrevKv is the version after it.
		var pending *mvccpb.Event
		for valid && bytes.Equal(dataVersionsPrefix(it.Key()), prefix) {
			rev := dataKeyRev(it.Key())
			kv, err := storedVersion(it, userKey)
			if err != nil {
				return err
			}
			if pending != nil {
				pending.PrevKv = kv
				h.add(pending)
				pending = nil
			}
			if rev < h.fromRev {
				break
			}
			if kv != nil {
				pending = &mvccpb.Event{Type: mvccpb.PUT, Kv: kv}
			} else {
				pending = &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: userKey, ModRevision: rev}}
			}
			valid = it.Next()
		}
		if pending != nil {
			h.add(pending)
		}
		if valid && bytes.Equal(dataVersionsPrefix(it.Key()), prefix) {
			valid = it.SeekGE(dataKeyPastVersions(userKey))
		}
	}
	return it.Error()
}

func (h *historyScan) add(ev *mvccpb.Event) {
	if ev.Kv.ModRevision > h.toRev {
		return // above a window lowered since this key's scan began
	}
	h.events = append(h.events, ev)
	h.bytes += EventBytes(ev)
	if len(h.events) > 2*h.max || h.bytes > 2*h.maxBytes {
		h.trim()
	}
}

// EventBytes is about what an event holds in memory, and its encoded size:
// keys and values, and a little for the rest.
func EventBytes(ev *mvccpb.Event) int {
	n := 32 + len(ev.Kv.Key) + len(ev.Kv.Value)
	if ev.PrevKv != nil {
		n += 32 + len(ev.PrevKv.Key) + len(ev.PrevKv.Value)
	}
	return n
}

// trim sorts the events and, when there are more than max or more than
// maxBytes of them, keeps the lowest revisions that fit whole (at least one
// whole revision) and lowers toRev to the last revision kept.
func (h *historyScan) trim() {
	slices.SortFunc(h.events, func(a, b *mvccpb.Event) int {
		return cmp.Or(cmp.Compare(a.Kv.ModRevision, b.Kv.ModRevision), bytes.Compare(a.Kv.Key, b.Kv.Key))
	})
	limit, size := 0, 0 // the first event past either bound
	for limit < len(h.events) && limit < h.max {
		if size += EventBytes(h.events[limit]); size > h.maxBytes && limit > 0 {
			break
		}
		limit++
	}
	if limit == len(h.events) {
		return
	}
	cut := h.events[limit].Kv.ModRevision // the first revision not kept whole
	n := limit
	for n > 0 && h.events[n-1].Kv.ModRevision == cut {
		n--
	}
	if n == 0 { // one revision alone is over the limit: keep it whole
		for n < len(h.events) && h.events[n].Kv.ModRevision == cut {
			n++
		}
		cut++
	}
	clear(h.events[n:])
	h.events = h.events[:n]
	h.toRev = cut - 1
	h.bytes = 0
	for _, ev := range h.events {
		h.bytes += EventBytes(ev)
	}
}
