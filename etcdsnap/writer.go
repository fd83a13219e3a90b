package etcdsnap

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// commitEvery is how many records a write transaction takes before it
// commits and the next one begins.
const commitEvery = 10_000

// Writer builds a snapshot database. Versions may come in any order.
type Writer struct {
	db      *bolt.DB
	tx      *bolt.Tx
	records int
	maxRev  int64
}

// Create starts a snapshot database at path, which must not exist.
func Create(path string) (*Writer, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	w := &Writer{db: db}
	if err := w.begin(); err != nil {
		_ = db.Close()
		return nil, err
	}
	for _, name := range append([][]byte{bucketKey, bucketMeta, bucketLease}, emptyBuckets...) {
		if _, err := w.tx.CreateBucketIfNotExists(name); err != nil {
			w.Abort()
			return nil, err
		}
	}
	return w, nil
}

func (w *Writer) begin() (err error) {
	w.tx, err = w.db.Begin(true)
	w.records = 0
	return err
}

// record counts one record, committing the transaction every commitEvery.
func (w *Writer) record() error {
	w.records++
	if w.records < commitEvery {
		return nil
	}
	if err := w.tx.Commit(); err != nil {
		return err
	}
	return w.begin()
}

// Put stores a version of a key (a tombstone when tombstone is set: only
// kv's Key and ModRevision count). Versions of one revision are numbered
// (etcd's sub-revision) in the order they are put.
func (w *Writer) Put(kv *mvccpb.KeyValue, tombstone bool) error {
	rev := kv.ModRevision
	if rev < 1 {
		return fmt.Errorf("etcdsnap: version of %q at revision %d", kv.Key, rev)
	}
	val := kv
	if tombstone {
		val = &mvccpb.KeyValue{Key: kv.Key}
	}
	enc, err := proto.Marshal(val)
	if err != nil {
		return err
	}
	keys := w.tx.Bucket(bucketKey)
	// Versions mostly come in rising revisions: fill pages before
	// splitting them, as etcd's own writes do.
	keys.FillPercent = 0.9
	c := keys.Cursor()
	sub := int64(0)
	for {
		k, _ := c.Seek(revKey(rev, sub, false))
		if k == nil || !bytes.Equal(k[:min(len(k), revKeyLen)], revKey(rev, sub, false)) {
			break
		}
		sub++
	}
	if err := keys.Put(revKey(rev, sub, tombstone), enc); err != nil {
		return err
	}
	w.maxRev = max(w.maxRev, rev)
	return w.record()
}

// Lease stores a lease.
func (w *Writer) Lease(l Lease) error {
	if err := w.tx.Bucket(bucketLease).Put(binary.BigEndian.AppendUint64(nil, uint64(l.ID)), encodeLease(l)); err != nil {
		return err
	}
	return w.record()
}

// Finish records the revision the snapshot was taken at (etcd takes the
// highest revision it holds, or the compacted revision when higher) and
// its compacted revision (0: none), and closes the database, synced.
func (w *Writer) Finish(revision, compacted int64) error {
	if compacted > revision || w.maxRev > revision {
		w.Abort()
		return fmt.Errorf("etcdsnap: snapshot at revision %d holds revision %d, compacted at %d", revision, w.maxRev, compacted)
	}
	// A snapshot whose last revisions changed no key it still holds is
	// marked compacted at its revision, so etcd starts from there.
	if w.maxRev < revision {
		compacted = revision
	}
	meta := w.tx.Bucket(bucketMeta)
	puts := [][2][]byte{
		{metaConsIndex, binary.BigEndian.AppendUint64(nil, 1)},
		{metaTerm, binary.BigEndian.AppendUint64(nil, 1)},
		{metaStorage, []byte(StorageVersion)},
	}
	if compacted > 0 {
		puts = append(puts, [2][]byte{metaScheduled, revKey(compacted, 0, false)}, [2][]byte{metaFinished, revKey(compacted, 0, false)})
	}
	for _, p := range puts {
		if err := meta.Put(p[0], p[1]); err != nil {
			w.Abort()
			return err
		}
	}
	if err := w.tx.Commit(); err != nil {
		_ = w.db.Close()
		return err
	}
	if err := w.db.Sync(); err != nil {
		_ = w.db.Close()
		return err
	}
	return w.db.Close()
}

// Abort closes the database, unfinished; the caller removes the file.
func (w *Writer) Abort() {
	_ = w.tx.Rollback()
	_ = w.db.Close()
}
