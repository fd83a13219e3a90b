package etcdsnap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// hasHash reports whether a snapshot file of n bytes ends with the
// database's SHA-256: bbolt databases are whole pages, so a file with the
// hash appended is 32 bytes past a multiple of 512 (etcd's rule).
func hasHash(n int64) bool { return n%512 == sha256.Size }

// CopyVerified copies the snapshot file src to dst without its trailing
// hash and returns the database's SHA-256, which names the snapshot. A
// file whose hash does not match fails, as does one without a hash unless
// skipHashCheck (a database file copied from a member's data directory).
func CopyVerified(src, dst string, skipHashCheck bool) (id []byte, err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	id, err = hashed(src, skipHashCheck, out)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return nil, err
	}
	return id, nil
}

// CheckHash checks that the snapshot file at path ends with its
// database's SHA-256, as `etcdctl snapshot save` writes it.
func CheckHash(path string) error {
	_, err := hashed(path, false, io.Discard)
	return err
}

// hashed copies the database of the snapshot file src (without its
// trailing hash) to out and returns its SHA-256, checked against the
// trailing one (required unless skipHashCheck).
func hashed(src string, skipHashCheck bool, out io.Writer) ([]byte, error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	var want []byte
	if hasHash(size) {
		size -= sha256.Size
		want = make([]byte, sha256.Size)
		if _, err := in.ReadAt(want, size); err != nil {
			return nil, err
		}
	} else if !skipHashCheck {
		return nil, fmt.Errorf("snapshot missing hash but --skip-hash-check=false")
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), io.NewSectionReader(in, 0, size)); err != nil {
		return nil, err
	}
	id := h.Sum(nil)
	if want != nil && !skipHashCheck && !bytes.Equal(want, id) {
		return nil, fmt.Errorf("expected sha256 %x, got %x", want, id)
	}
	return id, nil
}

// Snapshot is an open snapshot database (without its trailing hash).
type Snapshot struct {
	db *bolt.DB
	// Revision is the store's revision: its highest stored revision, or its
	// compacted revision when higher.
	Revision int64
	// CompactRevision is the revision of its last finished compaction, 0 if none.
	CompactRevision int64
}

// Open opens a snapshot database read-only. A damaged or forged file is
// ErrCorrupt, never a crash: bbolt maps the file into memory and trusts
// its page numbers and offsets, so a file shorter than its pages say is
// refused before any page is read, and bbolt's panics and memory faults
// on a bad page are turned into errors (guarded).
func Open(path string) (s *Snapshot, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var db *bolt.DB
	err = guarded(func() (err error) {
		db, err = bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	s = &Snapshot{db: db}
	err = s.view(func(tx *bolt.Tx) error {
		if tx.Size() > st.Size() {
			return fmt.Errorf("%w: its pages take %d bytes, the file has %d", ErrCorrupt, tx.Size(), st.Size())
		}
		keys, meta := tx.Bucket(bucketKey), tx.Bucket(bucketMeta)
		if keys == nil || meta == nil {
			return fmt.Errorf("%w: no key or meta bucket", ErrCorrupt)
		}
		if v := meta.Get(metaFinished); v != nil {
			main, _, _, err := parseRevKey(v)
			if err != nil {
				return err
			}
			s.CompactRevision = main
		}
		if k, _ := keys.Cursor().Last(); k != nil {
			main, _, _, err := parseRevKey(k)
			if err != nil {
				return err
			}
			s.Revision = main
		}
		s.Revision = max(s.Revision, s.CompactRevision, 1)
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database.
func (s *Snapshot) Close() error { return s.db.Close() }

// view runs fn in a read transaction, guarded.
func (s *Snapshot) view(fn func(tx *bolt.Tx) error) error {
	return guarded(func() error { return s.db.View(fn) })
}

// guarded runs fn, which reads a memory-mapped database, turning a panic
// (bbolt's, on a page past the high-water mark or of the wrong kind) or a
// memory fault (an offset pointing outside the mapping, which the runtime
// reports as a panic while SetPanicOnFault is on) into ErrCorrupt.
func guarded(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupt, r)
		}
	}()
	return fn()
}

// Versions calls fn with every stored version in revision order. A
// deletion comes as a KeyValue with only Key and ModRevision set and
// tombstone true. fn may keep what it is given.
func (s *Snapshot) Versions(fn func(kv *mvccpb.KeyValue, tombstone bool) error) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKey).ForEach(func(k, v []byte) error {
			main, _, tombstone, err := parseRevKey(k)
			if err != nil {
				return err
			}
			kv := &mvccpb.KeyValue{}
			if err := proto.Unmarshal(v, kv); err != nil || len(kv.Key) == 0 {
				return fmt.Errorf("%w: version at revision %d", ErrCorrupt, main)
			}
			if tombstone {
				kv = &mvccpb.KeyValue{Key: kv.Key}
			}
			kv.ModRevision = main
			return fn(kv, tombstone)
		})
	})
}

// Leases returns the snapshot's leases.
func (s *Snapshot) Leases() ([]Lease, error) {
	var out []Lease
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLease)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			l, err := decodeLease(v)
			if err != nil {
				return err
			}
			if len(k) == 8 && l.ID == 0 {
				l.ID = int64(binary.BigEndian.Uint64(k))
			}
			out = append(out, l)
			return nil
		})
	})
	return out, err
}
