package statemachine

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// A replica added to a range that already exists starts empty and must be
// caught up by a snapshot of the range: replaying the range's log from its
// first entry would apply it without the state the range started with (a
// split's child starts from its parent's). ExpectSnapshot marks such a
// replica before it starts; its RangeSM then stays unopened (not served,
// no bounds, nothing published) until it has recovered a snapshot; entries
// handed to it before that are not applied, and mark it unusable (see
// FedLogBeforeSnapshot).

// ExpectSnapshot marks this node's replica of rangeID, about to start empty
// as a new member of an existing range, as waiting for a snapshot. It fails
// when the store has state for the range.
func (s *Store) ExpectSnapshot(rangeID uint64) error {
	if found, err := hasMeta(s.db, rangeID); err != nil || found {
		if err == nil {
			err = fmt.Errorf("statemachine: range %d already has state here", rangeID)
		}
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joining[rangeID] = true
	return nil
}

// AwaitsSnapshot reports whether the range's replica joined empty and has
// not recovered a snapshot yet.
func (s *Store) AwaitsSnapshot(rangeID uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.joining[rangeID]
}

// markFedLog records that a joining replica was handed log entries before
// a snapshot.
func (s *Store) markFedLog(rangeID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fedLog[rangeID] = true
}

// FedLogBeforeSnapshot reports whether a replica added to its range was
// handed the range's log instead of its snapshot: it applied nothing and
// can never serve; the range's leader should remove it.
func (s *Store) FedLogBeforeSnapshot(rangeID uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fedLog[rangeID]
}

// snapshotRecovered ends a joining replica's wait.
func (s *Store) snapshotRecovered(rangeID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.joining, rangeID)
}

// AppliedIndex is the Raft index the replica has applied (0 while a joining
// replica waits for its snapshot).
func (r *RangeSM) AppliedIndex() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.state.appliedIndex
}

// DropRange deletes a range's replica from the store once its Raft replica
// has been stopped (it was removed from the range): its metadata and the
// keys within its bounds that no other range of the store holds, with
// their lease-index entries.
func (s *Store) DropRange(rangeID uint64) error {
	s.mu.Lock()
	_, running := s.ranges[rangeID]
	delete(s.joining, rangeID)
	delete(s.fedLog, rangeID)
	s.mu.Unlock()
	if running {
		return fmt.Errorf("statemachine: range %d is still running here", rangeID)
	}
	s.clearMu.Lock()
	defer s.clearMu.Unlock()
	snap := s.db.NewSnapshot()
	owned, err := ownedOnly(snap, rangeID)
	closeQuietly(snap)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer closeQuietly(b)
	if err := clearSpans(s.db, b, owned); err != nil {
		return err
	}
	mp := metaPrefix(rangeID)
	if err := b.DeleteRange(mp, prefixEnd(mp), nil); err != nil {
		return err
	}
	if err := b.Delete(replicaKey(rangeID), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	s.snaps.noteCommit()
	s.unflushed.forget(rangeID)
	s.reclaim(rangeID, owned)
	return nil
}

// reclaim frees the disk space of spans a dropped range owned alone. The
// range deletions of DropRange free it only once compactions carry them
// down to the data, and not while any Pebble snapshot (a view or snapshot
// of another range) can still see it: a node shedding replicas to stay
// under its quota would keep their bytes. Excising the spans drops their
// sstables, or cuts them, at once. An excise also takes the keys from open
// snapshots, so it waits (reclaimWait at most) for the dropped range's open
// views to close: no new one opens, the range being closed. The caller
// holds clearMu, so no snapshot of a new replica loads into the spans
// meanwhile. Failing, or timing out, it leaves the range deletions to free
// the space.
func (s *Store) reclaim(rangeID uint64, spans []bounds) {
	if len(spans) == 0 || !s.views.awaitNone(rangeID, reclaimWait) {
		return
	}
	for _, sp := range spans {
		lower, upper := dataSpanBounds(sp.span())
		if err := s.db.Excise(context.Background(), pebble.KeyRange{Start: lower, End: upper}); err != nil {
			s.logger.Errorf("statemachine: excising a dropped range's keys: %v", err)
			return
		}
	}
}

// Running reports whether a RangeSM of the range is open or opening here
// (created by Dragonboat and not closed yet).
func (s *Store) Running(rangeID uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ranges[rangeID]
	return ok
}

func replicaKey(rangeID uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixReplica}, rangeID)
}

// SetReplicaID records this node's replica ID in a range when it is not the
// node's own ID (a node holding the range again, under a new incarnation;
// see internal/replicaid), for the replica's restarts.
func (s *Store) SetReplicaID(rangeID, replicaID uint64) error {
	return s.db.Set(replicaKey(rangeID), binary.BigEndian.AppendUint64(nil, replicaID), pebble.Sync)
}

// ReplicaID returns this node's replica ID in a range as SetReplicaID
// recorded it; ok is false when none was.
func (s *Store) ReplicaID(rangeID uint64) (id uint64, ok bool, err error) {
	v, found, err := getValue(s.db, replicaKey(rangeID))
	if err != nil || !found {
		return 0, false, err
	}
	if len(v) != 8 {
		return 0, false, fmt.Errorf("statemachine: range %d's replica ID record has %d bytes", rangeID, len(v))
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// Floor is the revision at and below which this replica has applied every
// command it ever will (see Applied.Floor).
func (r *RangeSM) Floor() int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.state.floor()
}

// reclaimWait bounds how long DropRange waits for a dropped range's open
// views to close before it excises the range's keys.
const reclaimWait = 10 * time.Second

// openViews counts open views by range.
type openViews struct {
	mu sync.Mutex
	n  map[uint64]int
}

func (o *openViews) opened(rangeID uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[uint64]int{}
	}
	o.n[rangeID]++
}

func (o *openViews) closed(rangeID uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n[rangeID]--; o.n[rangeID] <= 0 {
		delete(o.n, rangeID)
	}
}

// awaitNone waits until the range has no open view, at most limit; it
// reports whether it has none.
func (o *openViews) awaitNone(rangeID uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		o.mu.Lock()
		open := o.n[rangeID]
		o.mu.Unlock()
		if open == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
