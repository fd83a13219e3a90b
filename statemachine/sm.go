package statemachine

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// RangeSM is one range's IOnDiskStateMachine.
//
// Dragonboat serialises Open, Update, Sync, PrepareSnapshot,
// RecoverFromSnapshot and Close; View/Lookup and SaveSnapshot run
// concurrently with them and read Pebble snapshots only.
type RangeSM struct {
	store     *Store
	rangeID   uint64
	replicaID uint64

	// state and bounds are the range's metadata as last committed, for the
	// update path and for Views. Written only by Open, Update and
	// RecoverFromSnapshot, under mu held for writing together with the
	// commit of the batch recording them (the update path reads them
	// without mu: Dragonboat serialises it with the writers).
	state  rangeState
	bounds bounds

	mu sync.RWMutex
	// unavailable says why Views are refused ("" when they are not). Set
	// under mu held for writing, so a View's Pebble snapshot is taken either
	// entirely before recovery starts or after it ends. Guarded by mu.
	unavailable string
	// publicBounds is bounds for Bounds() and Generation(). Guarded by mu.
	publicBounds bounds
	// opened is set once Open has loaded the range's metadata; before that
	// the range is not served (Store.Range returns nil). Guarded by mu.
	opened bool

	// applied is the applied index for WaitApplied, moved once an Update's
	// batch is committed and its events published.
	applied appliedWaiter
}

const (
	unavailableClosed     = "closed"
	unavailableRecovering = "recovering from a snapshot"
)

var _ sm.IOnDiskStateMachine = (*RangeSM)(nil)

// RangeID returns the range's ID.
func (r *RangeSM) RangeID() uint64 { return r.rangeID }

// Bounds returns the range's bounds [start, end); end nil is unbounded.
func (r *RangeSM) Bounds() (start, end []byte) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return bytes.Clone(r.publicBounds.start), bytes.Clone(r.publicBounds.end)
}

// VersionedBounds returns the range's bounds and their generation, read
// together (a split between two separate calls could pair old bounds with a
// new generation).
func (r *RangeSM) VersionedBounds() (start, end []byte, generation uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	b := r.publicBounds
	return bytes.Clone(b.start), bytes.Clone(b.end), b.generation
}

// Generation returns the generation of the range's bounds: 1 for a range
// that never split, incremented by every split; a split's child starts at
// its parent's new generation. Of two overlapping bounds (of any ranges), the
// one with the higher generation is the newer.
func (r *RangeSM) Generation() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.publicBounds.generation
}

// Hold returns the ID of the write spanning ranges that holds the range
// and the hold's revision; nil when it is not held.
func (r *RangeSM) Hold() (txnID []byte, rev int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if h := r.state.hold; h != nil {
		return bytes.Clone(h.GetTxnId()), h.GetRevision()
	}
	return nil, 0
}

func (r *RangeSM) markUnavailable(why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unavailable = why
}

func (r *RangeSM) setMeta(st rangeState, b bounds) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setMetaLocked(st, b)
}

func (r *RangeSM) setMetaLocked(st rangeState, b bounds) {
	r.state, r.bounds = st, b
	r.publicBounds = b
	r.opened = true
}

// commitMeta commits batch and sets the range's metadata while holding mu,
// so no View's snapshot falls between the two.
func (r *RangeSM) commitMeta(batch *pebble.Batch, st rangeState, b bounds) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if err := batch.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("statemachine: range %d committing batch: %w", r.rangeID, err)
	}
	if r.store.onCommit != nil {
		r.store.onCommit(time.Since(start))
	}
	r.noteCommit(batch)
	r.setMetaLocked(st, b)
	return nil
}

// noteCommit records a batch committed for the range: for Views' shared
// snapshots (before any metadata depending on it is published) and for
// SizeBytes.
func (r *RangeSM) noteCommit(b *pebble.Batch) {
	r.store.snaps.noteCommit()
	r.store.unflushed.add(r.rangeID, b.Len())
}

func (r *RangeSM) isOpen() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.opened
}

// Open reads the range's persisted metadata and returns its applied index.
func (r *RangeSM) Open(stopc <-chan struct{}) (uint64, error) {
	if r.store.AwaitsSnapshot(r.rangeID) {
		// A new member of an existing range: unopened until its snapshot.
		return 0, nil
	}
	st, b, err := loadMeta(r.store.db, r.rangeID)
	if err != nil {
		return 0, err
	}
	r.setMeta(st, b)
	// A range that never applied anything (a split's child) continues its
	// parent's published events; one that did may have applied events
	// nobody saw published.
	r.publish(nil, st.floor(), st.appliedIndex > 0)
	r.applied.advance(st.appliedIndex)
	return st.appliedIndex, nil
}

// Update applies entries in one Pebble batch that also records the applied
// index and the range's state, committed without sync (Dragonboat's log is
// the durable record; Sync makes it durable). After the commit it calls
// StoreOptions.OnSplit once per split applied, in log order.
func (r *RangeSM) Update(entries []sm.Entry) ([]sm.Entry, error) {
	if len(entries) == 0 {
		return entries, nil
	}
	if hook := r.store.beforeUpdate; hook != nil {
		hook(r.rangeID)
	}
	if r.store.AwaitsSnapshot(r.rangeID) {
		// Fed the range's log instead of its snapshot (the leader that
		// added this replica lost its leadership to one whose log was not
		// compacted): nothing is applied, and the replica stays unopened
		// and marks itself unusable, so that the range's leader removes it.
		r.store.markFedLog(r.rangeID)
		return entries, nil
	}
	b := r.store.db.NewIndexedBatch()
	defer closeQuietly(b)
	a := &applier{rangeID: r.rangeID, b: b, state: r.state, bounds: r.bounds, points: pointIter{b: b}}
	defer a.points.close()
	if r.store.onApply != nil {
		a.log = &eventLog{}
	}
	for i := range entries {
		res, err := a.applyEntry(entries[i].Cmd)
		if err != nil {
			return nil, fmt.Errorf("statemachine: range %d applying index %d: %w", r.rangeID, entries[i].Index, err)
		}
		entries[i].Result = res
		a.state.appliedIndex = entries[i].Index
	}
	a.points.close()
	if err := b.Set(metaKey(r.rangeID, metaState), a.state.encode(), nil); err != nil {
		return nil, err
	}
	if a.state.hold != r.state.hold {
		if err := writeHold(b, r.rangeID, a.state.hold); err != nil {
			return nil, err
		}
	}
	if a.state.coCommits != r.state.coCommits {
		if err := b.Set(metaKey(r.rangeID, metaCoCommits), a.state.coCommits.encode(), nil); err != nil {
			return nil, err
		}
	}
	// The batch and the metadata it records are published as one step for
	// View (which snapshots under mu and takes the metadata from memory);
	// when the batch changes the bounds, a View that sees the new bounds
	// implies Bounds() reports them too and a router that refreshes after
	// ErrWrongRange routes by them.
	if err := r.commitMeta(b, a.state, a.bounds); err != nil {
		return nil, err
	}
	r.publish(a.log.all(), a.state.floor(), false)
	r.applied.advance(a.state.appliedIndex)
	if len(a.splits) == 0 {
		return entries, nil
	}
	// The parent's unflushed bytes are now partly the children's, in an
	// unknown share: count neither's until Pebble flushes them (counting
	// them all for the parent could make it look past the size limit again
	// right after a size split).
	r.store.unflushed.forget(r.rangeID)
	if onSplit := r.store.onSplit; onSplit != nil {
		for _, childID := range a.splits {
			onSplit(r.rangeID, childID)
		}
	}
	return entries, nil
}

// applyEntry applies one entry's command, or each command of its batch in
// order, and returns the entry's result; an error is fatal.
func (a *applier) applyEntry(data []byte) (sm.Result, error) {
	cmd, err := decodeCommand(data)
	if err != nil {
		return encodeResult(nil, err, a.bounds.generation)
	}
	batch := cmd.GetBatch()
	if batch == nil {
		return a.applyOne(cmd)
	}
	if cmd.GetRevision() != 0 {
		return encodeResult(nil, errorf(ErrInvalidCommand, "batch with revision %d", cmd.GetRevision()), a.bounds.generation)
	}
	out := &tesserapb.BatchResult{Results: make([][]byte, len(batch.GetCommands()))}
	for j, c := range batch.GetCommands() {
		res, err := a.applyOne(c)
		if err != nil {
			return sm.Result{}, err
		}
		out.Results[j] = res.Data
	}
	data, err = proto.Marshal(out)
	if err != nil {
		return sm.Result{}, err
	}
	return sm.Result{Data: data}, nil
}

// applyOne applies one command (not a batch) and encodes its result; an
// error is fatal.
func (a *applier) applyOne(cmd *tesserapb.Command) (sm.Result, error) {
	response, err := a.apply(cmd)
	if err != nil && !isCommandError(err) {
		return sm.Result{}, err
	}
	return encodeResult(response, err, a.bounds.generation)
}

func encodeResult(response []byte, err error, generation uint64) (sm.Result, error) {
	res := &tesserapb.Result{Code: ErrorCode(err), Response: response, Generation: generation}
	if err != nil {
		res.Message = err.Error()
	}
	data, merr := proto.Marshal(res)
	if merr != nil {
		return sm.Result{}, merr
	}
	return sm.Result{Value: uint64(uint32(res.Code)), Data: data}, nil
}

// DecodeBatchResult splits what Update returned for a BatchCommand of n
// commands into each command's result, in order.
func DecodeBatchResult(r sm.Result, n int) ([]sm.Result, error) {
	batch := &tesserapb.BatchResult{}
	if err := proto.Unmarshal(r.Data, batch); err != nil {
		return nil, fmt.Errorf("statemachine: decoding a batch result: %w", err)
	}
	if len(batch.GetResults()) != n {
		if res, err := DecodeResult(r); err == nil && ErrorFromResult(res) != nil {
			// The batch as a whole was refused (it could not be decoded).
			return nil, ErrorFromResult(res)
		}
		return nil, fmt.Errorf("statemachine: a batch of %d commands answered %d results", n, len(batch.GetResults()))
	}
	out := make([]sm.Result, n)
	for i, data := range batch.GetResults() {
		out[i] = sm.Result{Data: data}
	}
	return out, nil
}

// DecodeResult decodes what Update returned for one entry.
func DecodeResult(r sm.Result) (*tesserapb.Result, error) {
	res := &tesserapb.Result{}
	if err := proto.Unmarshal(r.Data, res); err != nil {
		return nil, fmt.Errorf("statemachine: decoding result: %w", err)
	}
	return res, nil
}

// Lookup runs q, which must be a func(*View) (any, error), on a fresh View
// and closes the view afterwards.
func (r *RangeSM) Lookup(q any) (any, error) {
	fn, ok := q.(func(*View) (any, error))
	if !ok {
		return nil, fmt.Errorf("statemachine: Lookup wants a func(*View) (any, error), got %T", q)
	}
	v, err := r.View()
	if err != nil {
		return nil, err
	}
	defer v.Close()
	return fn(v)
}

// Sync makes every committed Update durable (a synced write to Pebble's WAL).
func (r *RangeSM) Sync() error {
	return r.store.db.LogData(nil, pebble.Sync)
}

// Close releases the RangeSM; the shared Pebble stays open.
func (r *RangeSM) Close() error {
	r.markUnavailable(unavailableClosed)
	r.applied.close()
	r.store.unregister(r)
	return nil
}

// View returns a consistent point-in-time read view of the range. Close it.
func (r *RangeSM) View() (*View, error) {
	r.mu.RLock()
	if r.unavailable != "" {
		why := r.unavailable
		r.mu.RUnlock()
		return nil, errorf(ErrUnavailable, "range %d is %s", r.rangeID, why)
	}
	shared := r.store.snaps.acquire()
	// The metadata committed with the snapshot's last batch (see
	// commitMeta); read from the snapshot only before Open loaded it.
	st, b, opened := r.state, r.bounds, r.opened
	r.mu.RUnlock()
	if !opened {
		var err error
		if st, b, err = loadMeta(shared.snap, r.rangeID); err != nil {
			shared.release()
			return nil, err
		}
	}
	r.store.views.opened(r.rangeID)
	return &View{snap: shared, store: r.store, rangeID: r.rangeID, state: st, bounds: b, counts: r.store.counts}, nil
}
