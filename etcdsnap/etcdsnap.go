// Package etcdsnap writes and reads etcd v3 snapshot files: the bbolt
// database etcd streams through Maintenance.Snapshot (and `etcdctl
// snapshot save` writes), followed by the SHA-256 of the database. Only
// the parts of etcd's schema that hold the keyspace are used: the key
// bucket (every stored version of every key by revision), the lease
// bucket, and the meta bucket's compaction revisions, consistent index,
// term and storage version. Membership, alarms and auth are left empty:
// restoring a snapshot makes a new cluster, as `etcdutl snapshot restore`
// does.
package etcdsnap

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Bucket and meta key names of etcd's bbolt schema (etcd's
// server/storage/schema).
var (
	bucketKey     = []byte("key")
	bucketMeta    = []byte("meta")
	bucketLease   = []byte("lease")
	emptyBuckets  = [][]byte{[]byte("alarm"), []byte("cluster"), []byte("members"), []byte("members_removed"), []byte("auth"), []byte("authUsers"), []byte("authRoles")}
	metaConsIndex = []byte("consistent_index")
	metaTerm      = []byte("term")
	metaScheduled = []byte("scheduledCompactRev")
	metaFinished  = []byte("finishedCompactRev")
	metaStorage   = []byte("storageVersion")
)

// StorageVersion is the storage schema version the files written here
// claim, as etcd v3.7 writes it.
const StorageVersion = "3.7.0"

// revKeyLen is the length of a key bucket key: BE(main) '_' BE(sub), and a
// trailing 't' on a deletion (tombstone).
const revKeyLen = 17

func revKey(main, sub int64, tombstone bool) []byte {
	b := make([]byte, revKeyLen, revKeyLen+1)
	binary.BigEndian.PutUint64(b, uint64(main))
	b[8] = '_'
	binary.BigEndian.PutUint64(b[9:], uint64(sub))
	if tombstone {
		b = append(b, 't')
	}
	return b
}

func parseRevKey(b []byte) (main, sub int64, tombstone bool, err error) {
	switch {
	case len(b) == revKeyLen:
	case len(b) == revKeyLen+1 && b[revKeyLen] == 't':
		tombstone = true
	default:
		return 0, 0, false, fmt.Errorf("%w: key bucket key of %d bytes", ErrCorrupt, len(b))
	}
	if b[8] != '_' {
		return 0, 0, false, fmt.Errorf("%w: key bucket key without '_'", ErrCorrupt)
	}
	return int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[9:])), tombstone, nil
}

// ErrCorrupt: the file is not an etcd v3 snapshot, or is damaged.
var ErrCorrupt = errors.New("etcdsnap: not a valid etcd v3 snapshot")

// Lease is a lease as the snapshot keeps it: its ID and granted TTL.
type Lease struct {
	ID, TTL, RemainingTTL int64
}

// encodeLease and decodeLease are leasepb.Lease's protobuf encoding (ID 1,
// TTL 2, RemainingTTL 3, all int64), written out to keep etcd's server
// module out of the build.
func encodeLease(l Lease) []byte {
	var b []byte
	for i, v := range []int64{l.ID, l.TTL, l.RemainingTTL} {
		if v != 0 {
			b = protowire.AppendTag(b, protowire.Number(i+1), protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		}
	}
	return b
}

func decodeLease(b []byte) (Lease, error) {
	var l Lease
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return l, fmt.Errorf("%w: lease record", ErrCorrupt)
		}
		b = b[n:]
		if typ != protowire.VarintType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return l, fmt.Errorf("%w: lease record", ErrCorrupt)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return l, fmt.Errorf("%w: lease record", ErrCorrupt)
		}
		b = b[n:]
		switch num {
		case 1:
			l.ID = int64(v)
		case 2:
			l.TTL = int64(v)
		case 3:
			l.RemainingTTL = int64(v)
		}
	}
	return l, nil
}
