package statemachine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

// Snapshot stream format (version 1): the magic, then records
//
//	kind(1) uvarint(len key) key uvarint(len value) value
//
// in this order: one 'B' (bounds), one 'S' (state), 'M' metadata entries
// (key relative to the range's metadata prefix: leases), 'I' lease
// index entries and 'D' data entries (full Pebble keys, within the bounds),
// and one 'E' whose value is the uvarint number of records before it.
const snapshotMagic = "TESSNAP1"

const (
	recBounds     byte = 'B'
	recState      byte = 'S'
	recMeta       byte = 'M'
	recLeaseIndex byte = 'I'
	recData       byte = 'D'
	recEnd        byte = 'E'
)

// recoverBatchBytes is the size at which recovery commits a batch.
const recoverBatchBytes = 4 << 20

// checkStopEvery is how many records pass between looks at the done channel.
const checkStopEvery = 1024

// preparedSnapshot is PrepareSnapshot's state identifier.
type preparedSnapshot struct {
	snap *pebble.Snapshot
}

// PrepareSnapshot takes a Pebble snapshot of the state as last committed.
func (r *RangeSM) PrepareSnapshot() (any, error) {
	return &preparedSnapshot{snap: r.store.db.NewSnapshot()}, nil
}

// SaveSnapshot streams the range's metadata and its data and lease index
// entries within its bounds, as of PrepareSnapshot, and releases the
// snapshot.
func (r *RangeSM) SaveSnapshot(prepared any, w io.Writer, done <-chan struct{}) error {
	ps, ok := prepared.(*preparedSnapshot)
	if !ok {
		return fmt.Errorf("statemachine: SaveSnapshot got %T", prepared)
	}
	defer closeQuietly(ps.snap)
	return writeSnapshot(ps.snap, r.rangeID, w, done)
}

type snapshotWriter struct {
	w     *bufio.Writer
	count uint64
	done  <-chan struct{}
	buf   []byte
}

func (sw *snapshotWriter) record(kind byte, k, v []byte) error {
	if sw.count%checkStopEvery == 0 && stopped(sw.done) {
		return sm.ErrSnapshotStopped
	}
	sw.buf = append(sw.buf[:0], kind)
	sw.buf = binary.AppendUvarint(sw.buf, uint64(len(k)))
	sw.buf = append(sw.buf, k...)
	sw.buf = binary.AppendUvarint(sw.buf, uint64(len(v)))
	sw.buf = append(sw.buf, v...)
	sw.count++
	_, err := sw.w.Write(sw.buf)
	return err
}

func stopped(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func writeSnapshot(snap *pebble.Snapshot, rangeID uint64, w io.Writer, done <-chan struct{}) error {
	st, bnds, err := loadMeta(snap, rangeID)
	if err != nil {
		return err
	}
	sw := &snapshotWriter{w: bufio.NewWriterSize(w, 64<<10), done: done}
	if _, err := sw.w.WriteString(snapshotMagic); err != nil {
		return err
	}
	if err := sw.record(recBounds, nil, bnds.encode()); err != nil {
		return err
	}
	if err := sw.record(recState, nil, st.encode()); err != nil {
		return err
	}
	mp := metaPrefix(rangeID)
	err = iterPrefix(snap, mp, func(k, v []byte) error {
		rel := k[len(mp):]
		if len(rel) > 0 && (rel[0] == metaState || rel[0] == metaBounds) {
			return nil
		}
		return sw.record(recMeta, rel, v)
	})
	if err != nil {
		return err
	}
	err = iterPrefix(snap, []byte{prefixLeaseIndex}, func(k, v []byte) error {
		_, userKey, err := decodeLeaseIndexKey(k)
		if err != nil {
			return err
		}
		if !bnds.containsKey(userKey) {
			return nil
		}
		return sw.record(recLeaseIndex, k, v)
	})
	if err != nil {
		return err
	}
	lower, upper := dataSpanBounds(bnds.span())
	err = iterSpan(snap, lower, upper, func(k, v []byte) error { return sw.record(recData, k, v) })
	if err != nil {
		return err
	}
	if err := sw.record(recEnd, nil, binary.AppendUvarint(nil, sw.count)); err != nil {
		return err
	}
	return sw.w.Flush()
}

// clearSpans deletes the data and lease index entries of the user keys in
// spans.
func clearSpans(db *pebble.DB, b *pebble.Batch, spans []bounds) error {
	if len(spans) == 0 {
		return nil
	}
	for _, s := range spans {
		lower, upper := dataSpanBounds(s.span())
		if err := b.DeleteRange(lower, upper, nil); err != nil {
			return err
		}
	}
	return iterPrefix(db, []byte{prefixLeaseIndex}, func(k, _ []byte) error {
		_, userKey, err := decodeLeaseIndexKey(k)
		if err != nil {
			return err
		}
		for _, s := range spans {
			if s.containsKey(userKey) {
				return b.Delete(bytes.Clone(k), nil)
			}
		}
		return nil
	})
}

// spansToClear decides which user keys a recovery of rangeID to newBounds
// deletes before loading the snapshot:
//
//   - all of newBounds: the snapshot is the truth about those keys. Dragonboat
//     only installs a snapshot newer than what the replica applied and bounds
//     never grow, so no other range of the store owns keys in them — at most
//     a stale ancestor replica still claims them, until it applies the split
//     (or a snapshot) that narrows it;
//   - and the part of the replica's old bounds outside newBounds, minus the
//     bounds stored for every other range of the store. Old bounds wider
//     than the snapshot's mean the snapshot was taken after splits this
//     replica never applied: those keys belong to the children. A child
//     replica already in this store (its metadata is there, whether or not
//     its RangeSM is open) owns them, and they are kept; keys no range here
//     owns are the parent's stale copy and are deleted. (A child replica
//     added to this store later recovers from its own snapshot, which
//     clears its bounds first.)
//
// A replica with no metadata in the store has no old bounds: its default
// bounds (the whole keyspace) are not a claim on anything, and clearing them
// would wipe every other range of the node.
//
// The caller holds Store.clearMu until the deletion has committed.
func spansToClear(r pebble.Reader, rangeID uint64, newBounds bounds) ([]bounds, error) {
	owned, err := ownedOnly(r, rangeID, newBounds)
	if err != nil {
		return nil, err
	}
	return append([]bounds{newBounds}, owned...), nil
}

// ownedOnly returns the parts of the range's stored bounds that no other
// range of the store holds, less the spans in keep (none when the range has
// no bounds stored).
func ownedOnly(r pebble.Reader, rangeID uint64, keep ...bounds) ([]bounds, error) {
	old, found, err := storedBounds(r, rangeID)
	if err != nil || !found {
		return nil, err
	}
	others, err := storedRanges(r, rangeID)
	if err != nil {
		return nil, err
	}
	holes := keep
	for _, o := range others {
		holes = append(holes, o.bounds)
	}
	return subtractBounds(old, holes), nil
}

// RecoverFromSnapshot replaces the range's state by the snapshot's: it clears
// the range's metadata and its keys (the snapshot's bounds, and what the
// replica owned beyond them and no other range of the store owns: see
// spansToClear), then loads the snapshot in batches. Views are refused while it
// runs. A crash part way leaves no state record, so Open reports applied
// index 0 and Dragonboat recovers from the snapshot again.
func (r *RangeSM) RecoverFromSnapshot(rd io.Reader, done <-chan struct{}) error {
	r.markUnavailable(unavailableRecovering)
	if err := r.recoverFromSnapshot(rd, done); err != nil {
		return err // stay unavailable: the state is partial
	}
	r.markUnavailable("")
	r.store.snapshotRecovered(r.rangeID)
	r.applied.advance(r.state.appliedIndex)
	r.store.snapshotsRecovered.Add(1)
	return nil
}

func (r *RangeSM) recoverFromSnapshot(rd io.Reader, done <-chan struct{}) error {
	db := r.store.db
	br := bufio.NewReaderSize(rd, 64<<10)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil {
		return fmt.Errorf("statemachine: reading snapshot header: %w", err)
	}
	if string(magic) != snapshotMagic {
		return fmt.Errorf("statemachine: not a range snapshot (magic %q)", magic)
	}
	kind, _, v, err := readRecord(br)
	if err != nil {
		return err
	}
	if kind != recBounds {
		return fmt.Errorf("statemachine: snapshot starts with record %q, want bounds", kind)
	}
	newBounds, err := decodeBounds(v)
	if err != nil {
		return err
	}

	// Clear, and record the new bounds, in one batch.
	b := db.NewBatch()
	defer func() { closeQuietly(b) }()
	mp := metaPrefix(r.rangeID)
	if err := r.clearForRecovery(b, newBounds); err != nil {
		return err
	}
	closeQuietly(b)
	b = db.NewBatch()

	var st rangeState
	haveState := false
	for n := uint64(1); ; n++ {
		if n%checkStopEvery == 0 && stopped(done) {
			return sm.ErrSnapshotStopped
		}
		kind, k, v, err := readRecord(br)
		if err != nil {
			return err
		}
		switch kind {
		case recState:
			if st, err = decodeState(v); err != nil {
				return err
			}
			haveState = true
		case recMeta:
			err = b.Set(append(bytes.Clone(mp), k...), v, nil)
		case recLeaseIndex:
			if len(k) == 0 || k[0] != prefixLeaseIndex {
				return fmt.Errorf("statemachine: snapshot lease index record with key %q", k)
			}
			err = b.Set(k, v, nil)
		case recData:
			if len(k) == 0 || k[0] != prefixData {
				return fmt.Errorf("statemachine: snapshot data record with key %q", k)
			}
			if err = b.Set(k, v, nil); err == nil {
				err = indexVersion(b, k)
			}
		case recEnd:
			want, w := binary.Uvarint(v)
			if w <= 0 || want != n {
				return fmt.Errorf("statemachine: snapshot has %d records, its end says %d", n, want)
			}
			if !haveState {
				return errors.New("statemachine: snapshot without a state record")
			}
			if err := b.Set(metaKey(r.rangeID, metaState), st.encode(), nil); err != nil {
				return err
			}
			if err := b.Commit(pebble.Sync); err != nil {
				return err
			}
			r.noteCommit(b)
			// The hold and the co-commits, if any, came as metadata records.
			if st.hold, err = loadHold(db, r.rangeID); err != nil {
				return err
			}
			if st.coCommits, err = loadCoCommits(db, r.rangeID); err != nil {
				return err
			}
			r.setMeta(st, newBounds)
			r.publish(nil, st.floor(), true)
			return nil
		default:
			return fmt.Errorf("statemachine: unknown snapshot record kind %q", kind)
		}
		if err != nil {
			return err
		}
		if b.Len() >= recoverBatchBytes {
			if err := b.Commit(pebble.NoSync); err != nil {
				return err
			}
			r.noteCommit(b)
			closeQuietly(b)
			b = db.NewBatch()
		}
	}
}

// clearForRecovery deletes, in b, the range's metadata and the keys
// spansToClear names, records newBounds, and commits b; under Store.clearMu
// so that the other ranges' bounds it read are still the truth when the
// deletion lands.
func (r *RangeSM) clearForRecovery(b *pebble.Batch, newBounds bounds) error {
	db := r.store.db
	r.store.clearMu.Lock()
	defer r.store.clearMu.Unlock()
	// One point in time for every range's bounds: a range splitting now
	// hands its keys to its child in one batch, and the Pebble snapshot sees
	// the range either before (owning them) or after (the child owning them).
	snap := db.NewSnapshot()
	spans, err := spansToClear(snap, r.rangeID, newBounds)
	closeQuietly(snap)
	if err != nil {
		return err
	}
	if err := clearSpans(db, b, spans); err != nil {
		return err
	}
	mp := metaPrefix(r.rangeID)
	if err := b.DeleteRange(mp, prefixEnd(mp), nil); err != nil {
		return err
	}
	if err := b.Set(metaKey(r.rangeID, metaBounds), newBounds.encode(), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	r.store.snaps.noteCommit()
	r.store.unflushed.forget(r.rangeID)
	return nil
}

func readRecord(br *bufio.Reader) (kind byte, k, v []byte, err error) {
	kind, err = br.ReadByte()
	if err != nil {
		return 0, nil, nil, fmt.Errorf("statemachine: truncated snapshot: %w", err)
	}
	if k, err = readBytes(br); err != nil {
		return 0, nil, nil, err
	}
	if v, err = readBytes(br); err != nil {
		return 0, nil, nil, err
	}
	return kind, k, v, nil
}

const maxSnapshotField = 1 << 30

func readBytes(br *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("statemachine: truncated snapshot: %w", err)
	}
	if n > maxSnapshotField {
		return nil, fmt.Errorf("statemachine: snapshot field of %d bytes", n)
	}
	out := make([]byte, n)
	if _, err := io.ReadFull(br, out); err != nil {
		return nil, fmt.Errorf("statemachine: truncated snapshot: %w", err)
	}
	return out, nil
}
