package statemachine

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The revision index has an entry 'v' BE(revision) userKey for every
// stored version of a key (a Put's or a delete's), written in the same
// batch as the version and deleted with it by compaction. Data keys are
// ordered by user key, so finding the versions of a window of revisions by
// them means reading every version of the keys asked about; the index finds
// them in revision order, reading only the window's entries (those of the
// ranges this node holds, all of them). History uses whichever reads less.
//
// A version's entry is written wherever the version is: by Put and delete,
// by a snapshot's recovery (from the data it carries), and, for a store
// made before the index existed, once when the store opens. Entries are not
// removed when a range's replica leaves the node (DropRange): their
// versions are gone, and History skips an entry without its version. They
// go with compaction like every other.

// revIndexBuiltKey records that the store's revision index has an entry for
// every stored version.
var revIndexBuiltKey = []byte{prefixStore, 'r', 'e', 'v', 'i', 'n', 'd', 'e', 'x'}

// buildRevIndex gives every stored version its index entry, once per
// store: a store made before the index had none.
func buildRevIndex(db *pebble.DB) error {
	_, found, err := getValue(db, revIndexBuiltKey)
	if err != nil || found {
		return err
	}
	b := db.NewBatch()
	defer func() { closeQuietly(b) }()
	err = iterPrefix(db, []byte{prefixData}, func(k, _ []byte) error {
		userKey, rev, err := decodeDataKey(k)
		if err != nil {
			return err
		}
		if err := b.Set(revIndexKey(rev, userKey), nil, nil); err != nil {
			return err
		}
		if b.Len() < recoverBatchBytes {
			return nil
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return err
		}
		closeQuietly(b)
		b = db.NewBatch()
		return nil
	})
	if err != nil {
		return fmt.Errorf("statemachine: building the revision index: %w", err)
	}
	if err := b.Set(revIndexBuiltKey, nil, nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// indexVersion writes the index entry of a data record (a snapshot's).
func indexVersion(b *pebble.Batch, dataKey []byte) error {
	userKey, rev, err := decodeDataKey(dataKey)
	if err != nil {
		return err
	}
	return b.Set(revIndexKey(rev, userKey), nil, nil)
}

// History strategies (Store.historyMode; tests force one).
const (
	historyEither  = iota // whichever reads less, by Pebble's estimates
	historyByKeys         // every version of the keys asked about
	historyByIndex        // the revision index's window
)

// minIndexedHistoryBytes: a span whose versions take less than this on disk
// is read by keys, whatever the window.
const minIndexedHistoryBytes = 1 << 20

// historyUsesIndex reports whether History reads span's window by the
// revision index: when the span's versions take several times the bytes of
// the window's index entries (Pebble's estimates, from the sstables; what
// is still in memtables counts for nothing, and is read fast either way).
func (s *Store) historyUsesIndex(span keySpan, fromRev, toRev int64) bool {
	switch s.historyMode {
	case historyByKeys:
		return false
	case historyByIndex:
		return true
	}
	lower, upper := dataSpanBounds(span)
	data, err := s.db.EstimateDiskUsage(lower, upper)
	if err != nil || data < minIndexedHistoryBytes {
		return false
	}
	index, err := s.db.EstimateDiskUsage(revIndexKey(fromRev, nil), revIndexKey(toRev+1, nil))
	return err == nil && index*4 < data
}

// scanIndex gathers the window's events of keys in span from the revision
// index, in revision order, a revision's events at a time: it stops before
// a revision whose events would take it past h.max (keeping at least one
// revision whole), as trim does. It looks the versions up in key order, so
// that lookups near each other read the same blocks.
//
// Versions are looked up only after the window is chosen by count; when
// they turn out to hold more than twice maxBytes (large values), it chooses
// again with a quarter as many, down to one revision, and trims to maxBytes
// at the end.
func (h *historyScan) scanIndex(r pebble.Reader, span keySpan) error {
	limit, toRev := h.max, h.toRev
	for {
		tooBig, err := h.scanIndexUpTo(r, span, limit)
		if err != nil {
			return err
		}
		if !tooBig {
			h.trim()
			return nil
		}
		clear(h.events)
		h.events, h.bytes, h.toRev = h.events[:0], 0, toRev
		limit = max(1, limit/4)
	}
}

// scanIndexUpTo is one attempt of scanIndex with at most limit events; it
// gives up (tooBig) once the versions looked up hold more than twice
// maxBytes and the window has more than one revision.
func (h *historyScan) scanIndexUpTo(r pebble.Reader, span keySpan, limit int) (tooBig bool, err error) {
	type entry struct {
		rev int64
		key []byte
	}
	var entries []entry
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: revIndexKey(h.fromRev, nil), UpperBound: revIndexKey(h.toRev+1, nil)})
	if err != nil {
		return false, err
	}
	// cut ends the window before the revision of entries[kept:], the last
	// one met, when it takes the entries past the limit after at least one
	// whole revision.
	kept := 0 // entries of the revisions before the last one met
	stopped := false
	cut := func() bool {
		if kept == 0 || len(entries) <= limit {
			return false
		}
		h.toRev = entries[kept].rev - 1
		entries = entries[:kept]
		return true
	}
	for valid := it.First(); valid; valid = it.Next() {
		rev, userKey, err := decodeRevIndexKey(it.Key())
		if err != nil {
			closeQuietly(it)
			return false, err
		}
		if !span.contains(userKey) {
			continue
		}
		if n := len(entries); n > 0 && entries[n-1].rev != rev {
			if stopped = cut(); stopped {
				break
			}
			if stopped = n >= limit; stopped {
				h.toRev = rev - 1
				break
			}
			kept = n
		}
		entries = append(entries, entry{rev, bytes.Clone(userKey)})
	}
	if !stopped {
		cut() // the window ended with the last revision met
	}
	err = it.Error()
	closeQuietly(it)
	if err != nil {
		return false, err
	}
	oneRevision := len(entries) == 0 || entries[0].rev == entries[len(entries)-1].rev

	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(bytes.Compare(a.key, b.key), cmp.Compare(b.rev, a.rev))
	})
	data, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixData}, UpperBound: []byte{prefixData + 1}})
	if err != nil {
		return false, err
	}
	defer closeQuietly(data)
	for _, e := range entries {
		ev, err := versionEvent(data, e.key, e.rev)
		if err != nil {
			return false, err
		}
		if ev != nil {
			h.events = append(h.events, ev)
			if h.bytes += EventBytes(ev); h.bytes > 2*h.maxBytes && !oneRevision {
				return true, nil
			}
		}
	}
	slices.SortFunc(h.events, func(a, b *mvccpb.Event) int {
		return cmp.Or(cmp.Compare(a.Kv.ModRevision, b.Kv.ModRevision), bytes.Compare(a.Kv.Key, b.Kv.Key))
	})
	return false, nil
}

// versionEvent returns the event of userKey's version at rev, with the
// version before it as PrevKv when that is live; nil when the version is
// not stored (its range's replica left this node).
func versionEvent(data *pebble.Iterator, userKey []byte, rev int64) (*mvccpb.Event, error) {
	key := dataKey(userKey, rev)
	if !data.SeekGE(key) || !bytes.Equal(data.Key(), key) {
		return nil, data.Error()
	}
	kv, err := storedVersion(data, userKey)
	if err != nil {
		return nil, err
	}
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: kv}
	if kv == nil {
		ev = &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: userKey, ModRevision: rev}}
	}
	prefix := dataVersionsPrefix(key)
	if data.Next() && bytes.Equal(dataVersionsPrefix(data.Key()), prefix) {
		if ev.PrevKv, err = storedVersion(data, userKey); err != nil {
			return nil, err
		}
	}
	return ev, data.Error()
}

// storedVersion decodes the version under data's position: nil for a
// tombstone.
func storedVersion(data *pebble.Iterator, userKey []byte) (*mvccpb.KeyValue, error) {
	v, err := data.ValueAndErr()
	if err != nil || len(v) == 0 {
		return nil, err
	}
	return decodeVersion(userKey, v)
}
