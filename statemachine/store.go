package statemachine

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"
)

// StoreOptions configures a node's Pebble. The zero value is usable.
type StoreOptions struct {
	// CacheSizeBytes is Pebble's block cache size; 0 means 64 MiB.
	CacheSizeBytes int64
	// MemTableSizeBytes is Pebble's memtable size; 0 means 16 MiB.
	MemTableSizeBytes uint64
	// Logger receives Pebble's log; nil means errors only, to the standard
	// logger (Pebble's informational messages are dropped).
	Logger pebble.Logger
	// OnSplit, when not nil, is called by RangeSM.Update once per split it
	// applied, in log order, after the batch that applied it has committed:
	// the child's metadata is then readable, and CreateStateMachine(childID,
	// …) followed by Open returns applied index 0 and sees the child's keys.
	// It is called synchronously on Dragonboat's apply goroutine for the
	// parent, so it must not block: no Raft calls, no waiting on the parent.
	// The node starts the child's Raft group from it in a goroutine of its
	// own. It is not called again for a split already applied (a restart
	// replays nothing below the persisted applied index), so the node must
	// also start, at boot, every range whose metadata is in the store.
	OnSplit func(parentRangeID, childRangeID uint64)
	// OnApply, when not nil, receives every range's applied events and
	// revision floor (see Applied): from Update after its batch has
	// committed, and with Reset from Open and from snapshot recovery. It is
	// called on Dragonboat's goroutines for the range, so it must not block.
	OnApply func(Applied)
	// OnCommit, when not nil, receives how long each Update's batch took
	// to commit to Pebble (no fsync: the Raft log is what is synced).
	OnCommit func(time.Duration)
	// BeforeUpdate, for tests only, is called with the range's ID as
	// RangeSM.Update starts; it may block, holding the range's applies back.
	BeforeUpdate func(rangeID uint64)
}

// quietLogger drops Pebble's informational messages.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	pebble.DefaultLogger.Errorf(format, args...)
}
func (quietLogger) Fatalf(format string, args ...any) {
	pebble.DefaultLogger.Fatalf(format, args...)
}

const defaultCacheSizeBytes = 64 << 20

// dataBlockBytes is the sstables' data block size (Pebble's default is 4 KiB).
const dataBlockBytes = 32 << 10

// defaultMemTableSizeBytes is four times Pebble's default. Values written at
// random keys are rewritten into the bottom level by every compaction of a
// flushed memtable, so larger flushes mean fewer rewrites of large values;
// much larger memtables slow sequential loads of small ones
// (docs/performance.md, "Large values").
const defaultMemTableSizeBytes = 16 << 20

// Store is one node's Pebble, shared by every range replica on the node.
type Store struct {
	db     *pebble.DB
	logger pebble.Logger // Pebble's logger, for the store's own errors. Immutable.
	// onSplit is StoreOptions.OnSplit. Immutable.
	onSplit func(parentRangeID, childRangeID uint64)
	// onApply is StoreOptions.OnApply. Immutable.
	onApply func(Applied)
	// historyMode is how History finds a window's versions (revindex.go):
	// historyEither unless a test forces one.
	historyMode int
	// beforeUpdate is StoreOptions.BeforeUpdate. Immutable.
	beforeUpdate func(rangeID uint64)

	// clearMu serialises the clearing step of snapshot recoveries (deciding
	// what to delete from the other ranges' stored bounds, and committing
	// the deletion), so that one recovery never deletes keys another has
	// just claimed; see RangeSM.recoverFromSnapshot.
	clearMu sync.Mutex
	// views counts the open views of each range (DropRange's reclaim waits
	// for a dropped range's to close).
	views openViews

	mu sync.Mutex
	// ranges holds the RangeSM created for each range and not yet closed.
	// Guarded by mu.
	ranges map[uint64]*RangeSM
	// joining holds the ranges whose replica here was just added to an
	// existing range and has no state yet: it must be caught up by a
	// snapshot (see ExpectSnapshot). Guarded by mu.
	joining map[uint64]bool
	// fedLog holds the joining replicas handed log entries before a
	// snapshot (see FedLogBeforeSnapshot). Guarded by mu.
	fedLog map[uint64]bool
	// closed is set by Close. Guarded by mu.
	closed bool

	// counts makes counts of paginated lists cheap (countcache.go).
	counts *countCache

	// snaps shares Pebble snapshots between views (sharedsnap.go); every
	// commit to db is noted there.
	snaps snapshots

	// unflushed counts the bytes committed for each range that Pebble has
	// not flushed to sstables yet (size.go).
	unflushed *unflushedBytes

	// snapshotsRecovered counts snapshots installed by RecoverFromSnapshot.
	snapshotsRecovered atomic.Int64

	onCommit func(time.Duration) // StoreOptions.OnCommit
}

// SnapshotsRecovered returns how many range snapshots this store has
// installed since it was opened (a replica that fell behind the leader's log).
func (s *Store) SnapshotsRecovered() int64 { return s.snapshotsRecovered.Load() }

// comparer orders keys bytewise, as Pebble's default comparer does and under
// its name (so stores made before it open unchanged), and adds Split
// (splitVersion): the versions of one user key then share a Pebble prefix, so
// sstables keep the values of older versions in value blocks and a scan steps
// over a key's older versions with NextPrefix without reading their values.
// ImmediateSuccessor of a data-key prefix must then sort past its versions.
// Separator and Successor keep keys whole (the default shortens the keys of
// index blocks, which could make keys that look like data keys but are not).
var comparer = func() *pebble.Comparer {
	c := *pebble.DefaultComparer
	c.Split = splitVersion
	c.ImmediateSuccessor = immediateSuccessor
	c.Separator = func(dst, a, _ []byte) []byte { return append(dst, a...) }
	c.Successor = func(dst, a []byte) []byte { return append(dst, a...) }
	return &c
}()

// OpenStore opens (creating if needed) the Pebble in dir.
func OpenStore(dir string, opts StoreOptions) (*Store, error) {
	cacheSize := opts.CacheSizeBytes
	if cacheSize <= 0 {
		cacheSize = defaultCacheSizeBytes
	}
	cache := pebble.NewCache(cacheSize)
	defer cache.Unref()
	po := &pebble.Options{Cache: cache, Logger: opts.Logger, Comparer: comparer}
	// Values of a key's older versions go to separate value blocks of an
	// sstable, so a scan stepping over them does not read them.
	po.Experimental.EnableValueBlocks = func() bool { return true }
	if po.Logger == nil {
		po.Logger = quietLogger{}
	}
	for i := range po.Levels {
		// Lists read values in key order: a 32 KiB data block serves eight
		// 4 KiB values with one read, checksum and cache insertion instead
		// of one each.
		po.Levels[i].BlockSize = dataBlockBytes
		// A Put looks up its key's live version; for a new key the bloom
		// filters skip the tables (whose larger blocks would cost the
		// lookup more to read).
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		po.Levels[i].FilterType = pebble.TableFilter
	}
	po.MemTableSize = defaultMemTableSizeBytes
	if opts.MemTableSizeBytes > 0 {
		po.MemTableSize = opts.MemTableSizeBytes
	}
	unflushed := newUnflushedBytes()
	po.EventListener = &pebble.EventListener{}
	unflushed.listen(po.EventListener)
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("statemachine: opening pebble in %s: %w", dir, err)
	}
	// Excise (DropRange's reclaim) needs virtual sstables.
	if db.FormatMajorVersion() < pebble.FormatVirtualSSTables {
		if err := db.RatchetFormatMajorVersion(pebble.FormatVirtualSSTables); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("statemachine: upgrading the format of the pebble in %s: %w", dir, err)
		}
	}
	if err := buildRevIndex(db); err != nil {
		_ = db.Close()
		return nil, err
	}
	s := &Store{db: db, logger: po.Logger, onSplit: opts.OnSplit, onApply: opts.OnApply, onCommit: opts.OnCommit, beforeUpdate: opts.BeforeUpdate, ranges: make(map[uint64]*RangeSM), joining: map[uint64]bool{}, fedLog: map[uint64]bool{}, counts: newCountCache(), unflushed: unflushed}
	s.snaps.db = db
	return s, nil
}

// Close closes the Pebble. Close the NodeHost (so every RangeSM is closed)
// and every View first.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, r := range s.ranges {
		r.markUnavailable(unavailableClosed)
	}
	s.mu.Unlock()
	return s.db.Close()
}

// DiskSizeBytes is Pebble's on-disk size (etcd's Status dbSize).
func (s *Store) DiskSizeBytes() int64 {
	return int64(s.db.Metrics().DiskSpaceUsage())
}

// CreateStateMachine creates range rangeID's state machine (rangeID is
// Dragonboat's shard ID). Pass it as a method value to
// NodeHost.StartOnDiskReplica. It replaces any RangeSM registered for the range.
func (s *Store) CreateStateMachine(rangeID, replicaID uint64) sm.IOnDiskStateMachine {
	r := &RangeSM{store: s, rangeID: rangeID, replicaID: replicaID}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ranges[rangeID] = r
	return r
}

// Range returns the running RangeSM of rangeID, nil if none.
func (s *Store) Range(rangeID uint64) *RangeSM {
	s.mu.Lock()
	r := s.ranges[rangeID]
	s.mu.Unlock()
	// Until Open has loaded its metadata a RangeSM knows neither its bounds
	// nor its revisions: it is not handed out.
	if r == nil || !r.isOpen() {
		return nil
	}
	return r
}

func (s *Store) unregister(r *RangeSM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ranges[r.rangeID] == r {
		delete(s.ranges, r.rangeID)
	}
}

// CompactAll has Pebble compact the whole store (etcd's defragmentation),
// so that what deletions and compactions removed leaves the disk.
func (s *Store) CompactAll(ctx context.Context) error {
	return s.db.Compact(ctx, []byte{0}, []byte{0xff}, true)
}

// PebbleMetrics returns Pebble's own metrics of the store (exported at
// /metrics under tessera_pebble_).
func (s *Store) PebbleMetrics() *pebble.Metrics { return s.db.Metrics() }

// CorruptForTesting overwrites, in place and outside Raft, the value of
// userKey's newest stored version with value: a replica whose data went
// bad on disk, for tests of the checks that notice it (HashKV).
func (s *Store) CorruptForTesting(userKey, value []byte) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: dataKeyPrefix(userKey), UpperBound: dataKeyPastVersions(userKey)})
	if err != nil {
		return err
	}
	defer closeQuietly(it)
	if !it.First() {
		return fmt.Errorf("statemachine: no version of %q", userKey)
	}
	kv, err := decodeVersion(userKey, it.Value())
	if err != nil || kv == nil {
		return fmt.Errorf("statemachine: %q has no value to corrupt (%v)", userKey, err)
	}
	kv.Key, kv.Value = nil, value
	enc, err := proto.Marshal(kv)
	if err != nil {
		return err
	}
	return s.db.Set(bytes.Clone(it.Key()), enc, pebble.Sync)
}
