package statemachine

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// The MVCC rules, stated once:
//
//   - A key's version at revision r is the newest stored entry with revision
//     <= r; the key is absent at r when that entry is a tombstone (empty value)
//     or there is none.
//   - A put at revision r writes KeyValue{create_revision: the live version's
//     create_revision, or r when the key is absent; mod_revision: r; version:
//     live version + 1, or 1}. A delete writes a tombstone at r.
//   - No command writes the same key twice (the duplicate-key check in txn.go),
//     so (key, revision) identifies one entry.
//   - Compaction at C removes, per key, every entry older than the newest
//     entry <= C, and that entry too when it is a tombstone, so every read at
//     a revision >= C sees what it saw before.

// mvccReader reads MVCC data from a Pebble snapshot or an indexed batch.
type mvccReader struct {
	r pebble.Reader
	// points, when set, serves get with one iterator reused across the
	// lookups of an Update (see pointIter); r is then its batch.
	points *pointIter
}

// pointIter is one iterator over an indexed batch (and the store under it)
// reused for the point lookups of one Update: creating and closing a Pebble
// iterator per Put would cost about as much as the lookup itself. Close it
// before the batch commits.
type pointIter struct {
	b  *pebble.Batch
	it *pebble.Iterator
}

// pointIterOptions bound the lookups to the data keys. A Put looks up its
// key's live version, and a new key has none: the bloom filters of the last
// level's tables (where most keys live) answer that from the block cache,
// where by default Pebble reads an index and a data block of such a table.
var pointIterOptions = pebble.IterOptions{LowerBound: []byte{prefixData}, UpperBound: []byte{prefixData + 1}, UseL6Filters: true}

// seekVersion positions the iterator at userKey's newest version at or
// below atRev and returns its stored value, ok false when there is none.
// Every call sees the batch as it is then (SetOptions refreshes an
// iterator's view of its indexed batch).
func (p *pointIter) seekVersion(userKey []byte, atRev int64) (value []byte, ok bool, err error) {
	if p.it == nil {
		if p.it, err = p.b.NewIter(&pointIterOptions); err != nil {
			return nil, false, err
		}
	} else {
		p.it.SetOptions(&pointIterOptions)
	}
	// The versions of a key share one Pebble prefix (splitVersion), so a
	// prefix seek stays within userKey's versions.
	if !p.it.SeekPrefixGE(dataKey(userKey, atRev)) {
		return nil, false, p.it.Error()
	}
	v, err := p.it.ValueAndErr()
	return v, err == nil, err
}

func (p *pointIter) close() {
	if p.it != nil {
		closeQuietly(p.it)
		p.it = nil
	}
}

// decodeVersion decodes a stored value (KeyValue without its key). It returns
// nil for a tombstone.
func decodeVersion(userKey, value []byte) (*mvccpb.KeyValue, error) {
	if len(value) == 0 {
		return nil, nil
	}
	kv := &mvccpb.KeyValue{}
	if err := proto.Unmarshal(value, kv); err != nil {
		return nil, fmt.Errorf("statemachine: corrupt version of %q: %w", userKey, err)
	}
	kv.Key = userKey
	return kv, nil
}

// get returns userKey's live version at atRev, nil when absent.
func (m mvccReader) get(userKey []byte, atRev int64) (*mvccpb.KeyValue, error) {
	if m.points != nil {
		v, ok, err := m.points.seekVersion(userKey, atRev)
		if err != nil || !ok {
			return nil, err
		}
		return decodeVersion(userKey, v)
	}
	var out *mvccpb.KeyValue
	err := m.scan(keySpan{start: userKey, point: true}, atRev, func(k, v []byte) (bool, error) {
		var err error
		out, err = decodeVersion(k, v)
		return false, err
	})
	return out, err
}

// scan calls visit with the user key and stored value of every key in s that
// is live at atRev, in key order, until visit returns false. The slices are
// only valid during the call (userKey is a fresh copy and may be kept).
func (m mvccReader) scan(s keySpan, atRev int64, visit func(userKey, value []byte) (bool, error)) error {
	lower, upper := dataSpanBounds(s)
	if bytes.Compare(lower, upper) >= 0 {
		return nil
	}
	it, err := m.r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	valid := it.First()
	for valid {
		k := it.Key()
		if len(k) < 1+2+revSuffixLen {
			return errBadKey
		}
		userKey, rev, err := decodeDataKey(k)
		if err != nil {
			return err
		}
		if rev > atRev {
			// Newer than the read: jump to the newest version <= atRev.
			valid = it.SeekGE(dataKey(userKey, atRev))
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(v) > 0 {
			more, err := visit(userKey, v)
			if err != nil || !more {
				return err
			}
		}
		valid = skipVersions(it, userKey)
	}
	return it.Error()
}

// skipVersions moves it past the remaining (older) versions of userKey (all
// of which share its Pebble prefix; see splitVersion).
func skipVersions(it *pebble.Iterator, userKey []byte) bool {
	return it.NextPrefix()
}

// mvccWriter writes versions at one revision into an indexed batch.
type mvccWriter struct {
	b   *pebble.Batch
	rev int64
	// log, when not nil, records the events written.
	log *eventLog
}

// put writes userKey's new version given its live version prev (nil when
// absent), maintains the lease index, and returns the new version.
func (w mvccWriter) put(userKey, value []byte, leaseID int64, prev *mvccpb.KeyValue) (*mvccpb.KeyValue, error) {
	kv := &mvccpb.KeyValue{
		CreateRevision: w.rev,
		ModRevision:    w.rev,
		Version:        1,
		Value:          value,
		Lease:          leaseID,
	}
	if prev != nil {
		kv.CreateRevision = prev.CreateRevision
		kv.Version = prev.Version + 1
	}
	enc, err := proto.Marshal(kv)
	if err != nil {
		return nil, err
	}
	if err := w.setVersion(userKey, enc); err != nil {
		return nil, err
	}
	if err := w.moveLease(userKey, prev, leaseID); err != nil {
		return nil, err
	}
	kv.Key = userKey
	w.log.put(kv, prev)
	return kv, nil
}

// delete writes a tombstone for userKey, whose live version is prev.
func (w mvccWriter) delete(userKey []byte, prev *mvccpb.KeyValue) error {
	if err := w.setVersion(userKey, nil); err != nil {
		return err
	}
	w.log.delete(userKey, w.rev, prev)
	return w.moveLease(userKey, prev, 0)
}

// moveLease keeps the lease index on userKey's live version: from prev's
// lease (prev nil: the key was absent) to leaseID (0: none).
func (w mvccWriter) moveLease(userKey []byte, prev *mvccpb.KeyValue, leaseID int64) error {
	if prev != nil && prev.Lease != 0 && prev.Lease != leaseID {
		if err := w.b.Delete(leaseIndexKey(prev.Lease, userKey), nil); err != nil {
			return err
		}
	}
	if leaseID != 0 && (prev == nil || prev.Lease != leaseID) {
		return w.b.Set(leaseIndexKey(leaseID, userKey), nil, nil)
	}
	return nil
}

// setVersion stores userKey's version at the writer's revision (nil: a
// tombstone) with its revision index entry.
func (w mvccWriter) setVersion(userKey, enc []byte) error {
	if err := w.b.Set(dataKey(userKey, w.rev), enc, nil); err != nil {
		return err
	}
	return w.b.Set(revIndexKey(w.rev, userKey), nil, nil)
}
