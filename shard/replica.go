package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/retry"
	"github.com/tesserakv/tessera/internal/rounds"
	"github.com/tesserakv/tessera/internal/solevoter"
	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// Oracle hands out revisions; shard needs only this method of it.
type Oracle interface {
	// NextN returns the first of count consecutive revisions, all above every
	// revision handed out before the call. It fails, rather than waits, when
	// the oracle cannot answer for a while (meta.OracleClient gives up
	// after its batchTimeout): the proposer calls it without a deadline.
	NextN(ctx context.Context, count int64) (int64, error)
}

// Config of one replica. Zero fields take the defaults below.
type Config struct {
	RangeID   uint64
	ReplicaID uint64
	// MaxInFlight bounds the proposals of this replica that are queued or not
	// yet applied. Default 4096.
	MaxInFlight int
	// RequestTimeout bounds one proposal or ReadIndex round. Default 5s.
	RequestTimeout time.Duration
	// LeaseCheckInterval is how often the leader looks for expired leases.
	// Default 500ms.
	LeaseCheckInterval time.Duration
	// Stopper, when set, is the node's: the replica's goroutines run on a
	// child of it. Without it the replica has a stopper of its own.
	Stopper *stop.Stopper
	// ExpireLeases: this range's leader keeps the lease clock and expires
	// leases (the home range); other ranges only hold lease records.
	ExpireLeases bool
	// RevokeExpired revokes an expired lease; nil revokes it on this range
	// only. The home range's node revokes it on every range.
	RevokeExpired func(ctx context.Context, id int64) error
	// SoleVoter reports whether this replica is its range's only voting
	// member, as it knows the members (known false: not yet). While it is,
	// no other leader can exist: once its leadership barrier is applied,
	// everything acknowledged is applied here, and a linearizable read needs
	// no ReadIndex round. Nil: always take the round. The answer is kept;
	// whoever adds a voter calls NotSole first.
	SoleVoter func() (sole, known bool)
	// ReadRoundGap is the least time between the starts of two ReadIndex
	// rounds while rounds are shared by several reads (rounds.Rounds.MinGap).
	// Default 1ms; negative: none.
	ReadRoundGap time.Duration
	// SnapshotEveryBytes, when positive, has the replica request a snapshot
	// of its range (which truncates the range's Raft log) each time it has
	// proposed this many bytes of entries since its last request: a log
	// that needs no catch-up entries (a sole replica's) then stays short
	// whatever the size of its entries.
	SnapshotEveryBytes int64
	// AfterRevisionsTaken, for tests only, runs after a batch of writes took
	// its revisions from the oracle and before they pass the fence (it may
	// block, to force the race of docs/design.md, "Read fence").
	AfterRevisionsTaken func(first int64)
	// RepeatRead, for tests only, is asked after a leader's linearizable
	// read (ReadAt) ran its function; true tries the read again, as when
	// leadership moved meanwhile.
	RepeatRead func() bool
	Logger     *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 4096
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.ReadRoundGap == 0 {
		c.ReadRoundGap = time.Millisecond
	}
	if c.LeaseCheckInterval <= 0 {
		c.LeaseCheckInterval = 500 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// retrying calls once until it succeeds, fails for good, or has tried for
// Config.RequestTimeout (several election timeouts: long enough for a range
// made by a split, or one that lost its leader, to elect one), pausing a
// little longer each time. Reads and the replica's own barriers use it;
// clients' writes are tried once here and again by the router.
func retrying[T any](r *Replica, ctx context.Context, once func() (T, error, bool)) (T, error) {
	policy := retry.Writes
	policy.Budget = r.cfg.RequestTimeout
	var out T
	err := policy.Do(ctx, r.stopper.ShouldQuiesce(), func() (bool, error) {
		var err error
		var again bool
		out, err, again = once()
		return again, err
	})
	return out, err
}

// Replica is one range replica on this node. The Raft replica itself is started
// by the caller (node assembly) with Store.CreateStateMachine; Replica drives it.
type Replica struct {
	cfg Config
	// sole remembers whether the range has this replica as its only voter.
	sole    solevoter.Flag
	nh      *dragonboat.NodeHost
	store   *statemachine.Store
	oracle  Oracle
	session *client.Session

	// inflight is a semaphore of Config.MaxInFlight slots.
	inflight chan struct{}
	// holdTurn is one slot: the holds that wait for another write's hold
	// to end (TxnHoldCommand.wait) take it from their wait until their
	// own hold has applied or failed, so that when a hold ends one waiting
	// hold is proposed, not all of them (all but one would be refused).
	holdTurn chan struct{}
	// queue feeds proposeLoop, the only goroutine that takes revisions and
	// proposes; its order is the log order.
	queue chan *proposal

	// readyTerm is the leader term in which this replica applied its
	// leadership barrier; 0 if none. Set by the proposer after the barrier;
	// reset to 0 by whoever sees leadership lost or a stale revision, which
	// forces a new barrier (and, on the home range, reloads the lease clock).
	readyTerm atomic.Uint64
	// leadershipTerm is the term of this replica's last leadership barrier
	// (Command.leadership_term); only the proposer uses it.
	leadershipTerm uint64

	// fence is the read/write fence over the revisions of this range.
	fence *fence

	// load measures requests routed to this range, for load-based splits.
	load *loadTracker

	leases *leaseClock

	// reads shares ReadIndex rounds among linearizable reads.
	reads rounds.Rounds

	// logBytes counts the bytes proposed since the last snapshot request
	// (Config.SnapshotEveryBytes); snapshotting is set while one is made.
	logBytes     atomic.Int64
	snapshotting atomic.Bool
	// snapshotsTaken counts the snapshots requested for SnapshotEveryBytes
	// that completed.
	snapshotsTaken atomic.Int64
	// failed counts ProposalsFailed.
	failed atomic.Int64

	// lastWake is when Wake last made a round (UnixNano).
	lastWake atomic.Int64

	// stopper owns the replica's goroutines (the proposer, the lease clock,
	// the followers of proposed entries, snapshot requests).
	stopper *stop.Stopper
}

type proposal struct {
	ctx context.Context
	cmd *tesserapb.Command
	// writesKeys: the command needs a revision from the oracle.
	writesKeys bool
	// done receives the proposal's final outcome; buffered, 1.
	done chan outcome
	// state is proposalQueued until the proposer takes the proposal
	// (proposalTaken) or its writer, the replica stopping, gives up on it
	// first (proposalAbandoned); exactly one of them moves it on.
	state atomic.Int32
}

const (
	proposalQueued int32 = iota
	proposalTaken
	proposalAbandoned
)

// outcome is how a proposal ended: err when it was never proposed, otherwise
// Dragonboat's result for its entry and, when the entry completed, the state
// machine's result for this proposal (its own part of a batch entry's).
type outcome struct {
	rr  dragonboat.RequestResult
	err error
	res sm.Result
}

// New returns a driver for the replica of cfg.RangeID on nh and starts its
// background goroutines; Stop ends them.
func New(cfg Config, nh *dragonboat.NodeHost, store *statemachine.Store, oracle Oracle) *Replica {
	cfg.setDefaults()
	r := &Replica{
		cfg:      cfg,
		nh:       nh,
		store:    store,
		oracle:   oracle,
		session:  nh.GetNoOPSession(cfg.RangeID),
		inflight: make(chan struct{}, cfg.MaxInFlight),
		holdTurn: make(chan struct{}, 1),
		queue:    make(chan *proposal, 256),
		leases:   newLeaseClock(),
		fence:    newFence(),
		load:     newLoadTracker(time.Now(), cfg.RangeID),
		stopper:  stop.ChildOf(cfg.Stopper),
	}
	r.reads.Round, r.reads.MinGap, r.reads.Stopper = r.readIndexRound, cfg.ReadRoundGap, r.stopper
	_ = r.stopper.RunAsync(r.proposeLoop)
	if cfg.ExpireLeases {
		_ = r.stopper.RunAsync(r.leaseLoop)
	}
	return r
}

// Stop ends the replica's goroutines; it does not stop the Raft replica.
func (r *Replica) Stop() { r.stopper.Stop() }

// RangeID of this replica.
func (r *Replica) RangeID() uint64 { return r.cfg.RangeID }

// Bounds are the range's keys [start, end) as this replica has applied them;
// end nil is the end of the keyspace. ok is false while the replica's state
// machine is not open yet (Dragonboat opens it in the background).
func (r *Replica) Bounds() (start, end []byte, ok bool) {
	rsm := r.store.Range(r.cfg.RangeID)
	if rsm == nil {
		return nil, nil, false
	}
	start, end = rsm.Bounds()
	return start, end, true
}

// RecordLoad counts a request routed to this range that touches key.
func (r *Replica) RecordLoad(key []byte) { r.load.record(key) }

// RollLoad ends the current load window and returns its requests per second.
func (r *Replica) RollLoad(now time.Time) float64 { return r.load.roll(now) }

// QPS is the request rate of the last finished load window.
func (r *Replica) QPS() float64 { return r.load.rate() }

// LoadSplitKey returns a key that would put about half of the last window's
// requests on each side of a split, or nil if there is none.
func (r *Replica) LoadSplitKey() []byte {
	start, _, ok := r.Bounds()
	if !ok {
		return nil
	}
	return r.load.splitKey(start)
}

// Joining reports whether the replica was just added to its range and
// waits for the range's snapshot (it has no state to serve yet).
func (r *Replica) Joining() bool { return r.store.AwaitsSnapshot(r.cfg.RangeID) }

// Generation of the range's bounds as this replica has applied them (it grows
// with every split); 0 while the replica is not open.
func (r *Replica) Generation() uint64 {
	rsm := r.store.Range(r.cfg.RangeID)
	if rsm == nil {
		return 0
	}
	return rsm.Generation()
}

// ReplicaID of this replica.
func (r *Replica) ReplicaID() uint64 { return r.cfg.ReplicaID }

// Leader returns the leader's replica ID and term as this replica knows them.
func (r *Replica) Leader() (leaderReplicaID, term uint64, ok bool) {
	id, term, valid, err := r.nh.GetLeaderID(r.cfg.RangeID)
	if err != nil || !valid {
		return 0, term, false
	}
	return id, term, true
}

// IsLeader reports whether this replica currently leads its range.
func (r *Replica) IsLeader() bool {
	id, _, ok := r.Leader()
	return ok && id == r.cfg.ReplicaID
}

// notLeader returns the error a request needing the leader gets here.
func (r *Replica) notLeader() error {
	id, _, ok := r.Leader()
	if !ok {
		return &NotLeaderError{}
	}
	return &NotLeaderError{LeaderReplicaID: id}
}

// Write proposes cmd once (its Revision is assigned here when writesKeys) and
// waits for the state machine's result. A result carrying a state-machine
// error is returned as that error (statemachine.ErrorFromResult). A write
// that was not applied and may be tried again fails with a RetryableError:
// the caller retries (the router, under retry.Writes).
func (r *Replica) Write(ctx context.Context, cmd *tesserapb.Command, writesKeys bool) (*tesserapb.Result, error) {
	// A replica that knows another leads its range says so at once: the
	// router forwards the write there, and the proposer would only answer
	// the same after two hand-offs.
	if leader, _, ok := r.Leader(); ok && leader != r.cfg.ReplicaID {
		return nil, &NotLeaderError{LeaderReplicaID: leader}
	}
	// Writes waiting for a hold to end wait before they take an in-flight
	// slot, which the hold's own commit or abort needs.
	if cmd.GetTxnHold().GetWait() {
		if err := r.take(ctx, r.holdTurn); err != nil {
			return nil, err
		}
		defer func() { <-r.holdTurn }()
	}
	if err := r.awaitUnheld(ctx, cmd, writesKeys); err != nil {
		if errors.Is(err, statemachine.ErrHoldConflict) {
			// As the state machine would answer (a forwarded write sends
			// the result back as it is).
			return &tesserapb.Result{Code: statemachine.ErrorCode(err), Message: err.Error()}, err
		}
		return nil, err
	}
	if err := r.take(ctx, r.inflight); err != nil {
		return nil, err
	}
	defer func() { <-r.inflight }()

	res, err, again := r.writeOnce(ctx, cmd, writesKeys)
	if err != nil && statemachine.ErrorCode(err) == statemachine.CodeUnknown {
		r.failed.Add(1) // not the command's own failure: Raft's or ours
	}
	if again {
		return nil, &RetryableError{Err: err}
	}
	return res, err
}

// InFlight is how many of this replica's proposals are queued or not yet
// applied.
func (r *Replica) InFlight() int { return len(r.inflight) }

// ProposalsFailed counts the writes this replica proposed that failed other
// than by the command's own error (a timeout, a lost leadership, a
// dropped proposal).
func (r *Replica) ProposalsFailed() int64 { return r.failed.Load() }

// take takes a slot of semaphore sem, waiting until one is free, the
// caller gives up or the replica stops (before the write was proposed).
func (r *Replica) take(ctx context.Context, sem chan struct{}) error {
	select {
	case <-r.stopper.ShouldQuiesce():
		return ErrStoppedUnproposed
	default:
	}
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.stopper.ShouldQuiesce():
		return ErrStoppedUnproposed
	}
}

// writeRetrying is Write tried again under the replica's own budget, for
// the commands it proposes on its own behalf (its leadership barrier).
func (r *Replica) writeRetrying(ctx context.Context, cmd *tesserapb.Command) (*tesserapb.Result, error) {
	return retrying(r, ctx, func() (*tesserapb.Result, error, bool) {
		res, err := r.Write(ctx, cmd, false)
		return res, err, IsRetryable(err)
	})
}

// proposalCommand is the command a proposal carries: a copy of cmd's own
// fields, which the proposer sets (revision, leadership term), sharing its
// operation, which nothing changes once proposed. A caller may try cmd
// again; a deep copy would also copy every value written.
func proposalCommand(cmd *tesserapb.Command) *tesserapb.Command {
	return &tesserapb.Command{Revision: cmd.Revision, LeadershipTerm: cmd.LeadershipTerm, Op: cmd.Op}
}

func (r *Replica) writeOnce(ctx context.Context, cmd *tesserapb.Command, writesKeys bool) (res *tesserapb.Result, err error, retry bool) {
	p := &proposal{ctx: ctx, cmd: proposalCommand(cmd), writesKeys: writesKeys, done: make(chan outcome, 1)}
	select {
	case r.queue <- p:
	case <-ctx.Done():
		return nil, ctx.Err(), false
	case <-r.stopper.ShouldQuiesce():
		return nil, ErrStoppedUnproposed, false
	}
	var out outcome
	select {
	case out = <-p.done:
	case <-ctx.Done():
		// The proposal goes on; its outcome is tracked for the fence.
		return nil, ctx.Err(), false
	case <-r.stopper.ShouldQuiesce():
		if p.state.CompareAndSwap(proposalQueued, proposalAbandoned) {
			return nil, ErrStoppedUnproposed, false
		}
		return nil, ErrStopped, false
	}
	if out.err != nil {
		var nl *NotLeaderError
		if errors.As(out.err, &nl) && nl.LeaderReplicaID == 0 {
			// No leader yet (an election is under way): wait for one.
			return nil, ErrNoLeader, true
		}
		if err, busy := raftBusy(out.err); busy {
			return nil, err, true
		}
		return nil, out.err, false
	}
	rr := out.rr
	switch {
	case rr.Completed():
		res, err := statemachine.DecodeResult(out.res)
		if err != nil {
			return nil, err, false
		}
		if err := statemachine.ErrorFromResult(res); err != nil {
			if errors.Is(err, statemachine.ErrStaleRevision) {
				// Someone else wrote at or above our revision: our leadership
				// barrier is out of date. Redo it and take a new revision.
				r.readyTerm.Store(0)
				return nil, err, true
			}
			if errors.Is(err, statemachine.ErrRangeHeld) {
				// A write spanning ranges holds the range until it
				// commits or aborts here: nothing changed, try again.
				return nil, err, true
			}
			if errors.Is(err, statemachine.ErrStaleLeader) {
				// Proposed in a term this replica no longer leads in: if
				// it is still ready in that term, its barrier is out of
				// date. Redo it (it finds out whether this replica still
				// leads) and propose again.
				r.readyTerm.CompareAndSwap(p.cmd.GetLeadershipTerm(), 0)
				return nil, err, true
			}
			return res, err, false
		}
		return res, nil, false
	case rr.Dropped():
		return nil, &NotLeaderError{}, true
	case rr.Timeout():
		return nil, ErrTimeout, false
	case rr.Terminated(), rr.Aborted():
		return nil, ErrStopped, false
	default:
		return nil, fmt.Errorf("shard: proposal rejected on range %d", r.cfg.RangeID), false
	}
}

// awaitUnheld waits, before cmd is proposed, while the range as this
// leader has applied it is held by a write spanning ranges that would
// refuse cmd (statemachine.RefusedWhileHeld), so that a write waiting for
// the hold to end does not cost a Raft write each time it tries. A hold
// that may not wait (TxnHoldCommand.wait unset) fails at once with
// ErrHoldConflict instead. A hold may begin or end between this check and
// the proposal's apply: the state machine decides then.
func (r *Replica) awaitUnheld(ctx context.Context, cmd *tesserapb.Command, writesKeys bool) error {
	if !statemachine.RefusedWhileHeld(cmd, writesKeys || cmd.GetRevision() > 0) {
		return nil
	}
	hold := cmd.GetTxnHold()
	rsm := r.store.Range(r.cfg.RangeID)
	if rsm == nil {
		return nil
	}
	for {
		applied := rsm.AppliedIndex()
		holder, _ := rsm.Hold()
		if holder == nil || (hold != nil && bytes.Equal(holder, hold.GetTxnId())) {
			return nil
		}
		if hold != nil && !hold.GetWait() {
			return statemachine.ErrHoldConflict
		}
		if err := rsm.WaitApplied(ctx, applied+1); err != nil {
			return err
		}
	}
}

// await waits for a request's outcome, the caller giving up, or Stop.
func (r *Replica) await(ctx context.Context, rs *dragonboat.RequestState) (dragonboat.RequestResult, error) {
	select {
	case rr := <-rs.ResultC():
		return rr, nil
	case <-ctx.Done():
		return dragonboat.RequestResult{}, ctx.Err()
	case <-r.stopper.ShouldQuiesce():
		return dragonboat.RequestResult{}, ErrStopped
	}
}

func (r *Replica) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.stopper.ShouldQuiesce():
		return ErrStopped
	}
}

// maxProposalBatch bounds how many queued proposals share one oracle call.
const maxProposalBatch = 512

// proposeLoop is the single proposer: it takes the queued proposals in
// batches, takes their revisions from the oracle in one call, and proposes
// them in revision order, so log order is revision order.
func (r *Replica) proposeLoop() {
	batch := make([]*proposal, 0, maxProposalBatch)
	for {
		batch = batch[:0]
		select {
		case <-r.stopper.ShouldQuiesce():
			return
		case p := <-r.queue:
			batch = append(batch, p)
		}
	drain:
		for len(batch) < maxProposalBatch {
			select {
			case p := <-r.queue:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		r.proposeBatch(batch)
	}
}

func (r *Replica) proposeBatch(batch []*proposal) {
	live := batch[:0:0]
	for _, p := range batch {
		if !p.state.CompareAndSwap(proposalQueued, proposalTaken) {
			continue // its writer gave up on it as the replica stopped
		}
		if err := p.ctx.Err(); err != nil {
			p.done <- outcome{err: err}
			continue
		}
		live = append(live, p)
	}
	if len(live) == 0 {
		return
	}
	fail := func(err error) {
		for _, p := range live {
			p.done <- outcome{err: err}
		}
	}
	if err := r.ensureLeaderReady(); err != nil {
		fail(err)
		return
	}
	var writers []*proposal
	for _, p := range live {
		p.cmd.LeadershipTerm = r.leadershipTerm
		if p.writesKeys {
			writers = append(writers, p)
		}
	}
	// Take the writers' revisions and admit them past the fence; a read that
	// raised the fence above them meanwhile makes them take new ones.
	var ids []uint64
	for len(writers) > 0 {
		// The oracle bounds its own calls (meta's batchTimeout).
		first, err := r.oracle.NextN(r.stopper.Context(), int64(len(writers)))
		if err != nil {
			fail(fmt.Errorf("shard: taking revisions: %w", err))
			return
		}
		if hook := r.cfg.AfterRevisionsTaken; hook != nil {
			hook(first)
		}
		var ok bool
		if ids, ok = r.fence.admit(first, len(writers)); ok {
			for i, p := range writers {
				p.cmd.Revision = first + int64(i)
			}
			break
		}
	}
	// Consecutive writers share one entry (a BatchCommand), up to
	// maxBatchEntryBytes; any other command goes in an entry of its own, so
	// the log keeps the queue's order.
	var entry entryBatch
	next := 0
	for _, p := range live {
		var id uint64
		if p.writesKeys {
			id = ids[next]
			next++
		}
		size := proto.Size(p.cmd)
		if !p.writesKeys || entry.bytes+size > maxBatchEntryBytes {
			r.proposeEntry(&entry)
		}
		entry.add(p, id, size)
		if !p.writesKeys {
			r.proposeEntry(&entry)
		}
	}
	r.proposeEntry(&entry)
}

// maxBatchEntryBytes bounds the commands proposed together in one entry (a
// larger command goes alone).
const maxBatchEntryBytes = 1 << 20

// entryBatch is the proposals of the next entry and their fence ids (0 for
// a proposal that writes no keys).
type entryBatch struct {
	ps    []*proposal
	ids   []uint64
	bytes int
}

func (e *entryBatch) add(p *proposal, id uint64, size int) {
	e.ps = append(e.ps, p)
	e.ids = append(e.ids, id)
	e.bytes += size
}

// proposeEntry proposes e's proposals as one entry (their command, or a
// BatchCommand of theirs) and empties e.
func (r *Replica) proposeEntry(e *entryBatch) {
	if len(e.ps) == 0 {
		return
	}
	ps, ids := e.ps, e.ids
	*e = entryBatch{}

	cmd := ps[0].cmd
	if len(ps) > 1 {
		cmds := make([]*tesserapb.Command, len(ps))
		for i, p := range ps {
			cmds[i] = p.cmd
		}
		cmd = &tesserapb.Command{Op: &tesserapb.Command_Batch{Batch: &tesserapb.BatchCommand{Commands: cmds}}}
	}
	data, err := proto.Marshal(cmd)
	var rs *dragonboat.RequestState
	if err == nil {
		rs, err = r.nh.Propose(r.session, data, r.cfg.RequestTimeout)
	}
	if err != nil {
		r.settle(ids)
		for _, p := range ps {
			p.done <- outcome{err: err}
		}
		return
	}
	term := r.leadershipTerm
	if err := r.stopper.RunAsync(func() { r.follow(ps, ids, rs, term) }); err != nil {
		r.settle(ids) // stopping: as follow does when the replica stops
		return
	}
	r.noteLogBytes(len(data))
}

// noteLogBytes counts n bytes proposed and, every Config.SnapshotEveryBytes,
// requests a snapshot of the range in the background (one at a time). A
// request refused or failed is made again with the next bytes proposed.
func (r *Replica) noteLogBytes(n int) {
	every := r.cfg.SnapshotEveryBytes
	if every <= 0 || r.logBytes.Add(int64(n)) < every || !r.snapshotting.CompareAndSwap(false, true) {
		return
	}
	r.logBytes.Store(0)
	err := r.stopper.RunAsync(func() {
		defer r.snapshotting.Store(false)
		if r.requestSnapshot() {
			r.snapshotsTaken.Add(1)
			return
		}
		r.logBytes.Add(every)
	})
	if err != nil {
		r.snapshotting.Store(false)
	}
}

// requestSnapshot asks Dragonboat for a snapshot of the range and reports
// whether one was taken.
func (r *Replica) requestSnapshot() bool {
	rs, err := r.nh.RequestSnapshot(r.cfg.RangeID, dragonboat.SnapshotOption{}, r.cfg.RequestTimeout)
	if err != nil {
		r.cfg.Logger.Debug("snapshot request refused", "range", r.cfg.RangeID, "err", err)
		return false
	}
	defer rs.Release()
	select {
	case rr := <-rs.ResultC():
		return rr.Completed()
	case <-r.stopper.ShouldQuiesce():
		return false
	}
}

// SnapshotsTaken returns how many snapshots the replica has taken because
// of Config.SnapshotEveryBytes.
func (r *Replica) SnapshotsTaken() int64 { return r.snapshotsTaken.Load() }

// settle settles the fence ids of proposals whose entry has ended (0: none).
func (r *Replica) settle(ids []uint64) {
	for _, id := range ids {
		if id != 0 {
			r.fence.settle(id)
		}
	}
}

// follow waits for the outcome of an entry carrying ps (their command, or a
// batch of theirs when more than one), proposed while this replica led in
// term, settles their fence ids and hands each its outcome. A write that
// timed out may still be applied: it is settled only once that is known
// (awaitInDoubt).
func (r *Replica) follow(ps []*proposal, ids []uint64, rs *dragonboat.RequestState, term uint64) {
	var rr dragonboat.RequestResult
	select {
	case rr = <-rs.ResultC():
	case <-r.stopper.ShouldQuiesce():
		r.settle(ids)
		return
	}
	rs.Release()
	if rr.Timeout() && slices.ContainsFunc(ids, func(id uint64) bool { return id != 0 }) {
		r.awaitInDoubt(term)
	}
	r.settle(ids)
	if len(ps) == 1 {
		ps[0].done <- outcome{rr: rr, res: rr.GetResult()}
		return
	}
	if !rr.Completed() {
		for _, p := range ps {
			p.done <- outcome{rr: rr}
		}
		return
	}
	results, err := statemachine.DecodeBatchResult(rr.GetResult(), len(ps))
	for i, p := range ps {
		if err != nil {
			p.done <- outcome{err: err}
			continue
		}
		p.done <- outcome{rr: rr, res: results[i]}
	}
}

// awaitInDoubt returns once an entry proposed while this replica led in
// term, whose outcome is unknown, has been applied or never will be: a
// barrier proposed after it has been applied; or this replica no longer
// leads in term (a fenced read checks the term it was fenced in, and a new
// leader applies its own leadership barrier before it reads, which settles
// the entry); or the replica stopped. A barrier that fails while this
// replica still leads in term (busy, timed out) is proposed again, so a
// fenced read never goes past a write that may still apply below it.
func (r *Replica) awaitInDoubt(term uint64) {
	barrier := &tesserapb.Command{Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{}}}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RequestTimeout)
		_, err, _ := r.writeOnce(ctx, barrier, false)
		cancel()
		if err == nil || errors.Is(err, ErrStopped) {
			return
		}
		if id, t, ok := r.Leader(); !ok || id != r.cfg.ReplicaID || t != term {
			return
		}
		if r.sleep(r.stopper.Context(), inDoubtRetryPause) != nil {
			return
		}
	}
}

// inDoubtRetryPause spaces the barriers awaitInDoubt proposes again.
const inDoubtRetryPause = 50 * time.Millisecond

// ensureLeaderReady returns nil when this replica leads its range and has
// applied a barrier in its current term, so that every entry of earlier terms
// is applied and the oracle has observed every revision written.
func (r *Replica) ensureLeaderReady() error {
	leader, term, ok := r.Leader()
	if !ok {
		return &NotLeaderError{}
	}
	if leader != r.cfg.ReplicaID {
		r.readyTerm.Store(0)
		r.leases.demote()
		return &NotLeaderError{LeaderReplicaID: leader}
	}
	if r.readyTerm.Load() == term {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RequestTimeout)
	defer cancel()
	data, err := proto.Marshal(&tesserapb.Command{LeadershipTerm: term, Op: &tesserapb.Command_Barrier{Barrier: &tesserapb.BarrierCommand{Leadership: true}}})
	if err != nil {
		return err
	}
	var applied sm.Result
	for {
		applied, err = r.nh.SyncPropose(ctx, r.session, data)
		if err == nil {
			break
		}
		if errors.Is(err, dragonboat.ErrTimeout) || errors.Is(err, dragonboat.ErrTimeoutTooSmall) ||
			errors.Is(err, dragonboat.ErrInvalidDeadline) || errors.Is(err, context.DeadlineExceeded) {
			// The barrier changes nothing, so it can be proposed again
			// while this replica still leads in the same term and time
			// is left. Dragonboat times out at once a proposal made on a
			// replica that has not ticked yet (see hastenElection in
			// server), which a range just made by a split can meet.
			if id, t, ok := r.Leader(); ok && id == r.cfg.ReplicaID && t == term && ctx.Err() == nil &&
				errors.Is(err, dragonboat.ErrTimeout) {
				continue
			}
			return ErrTimeout
		}
		return &NotLeaderError{}
	}
	res, err := statemachine.DecodeResult(applied)
	if err != nil {
		return err
	}
	if err := statemachine.ErrorFromResult(res); err != nil {
		if errors.Is(err, statemachine.ErrStaleLeader) {
			// A leader of a later term applied its barrier first.
			return &NotLeaderError{}
		}
		return err
	}
	if id, t, ok := r.Leader(); !ok || id != r.cfg.ReplicaID || t != term {
		// Leadership moved while the barrier was on its way (Raft may have
		// forwarded it to the new leader): this term's writes would be
		// refused.
		return &NotLeaderError{}
	}
	var recs []*tesserapb.LeaseRecord
	err = r.withView(func(v *statemachine.View) error {
		var err error
		recs, err = v.Leases()
		return err
	})
	if err != nil {
		return err
	}
	if r.cfg.ExpireLeases {
		r.leases.promote(recs, time.Now())
	}
	r.leadershipTerm = term
	r.readyTerm.Store(term)
	r.cfg.Logger.Debug("range leader ready", "range", r.cfg.RangeID, "replica", r.cfg.ReplicaID, "term", term)
	return nil
}

// localRead runs fn on a view of this replica's state as it is.
func (r *Replica) localRead(fn func(*statemachine.View) (any, error)) (any, error) {
	var out any
	err := r.withView(func(v *statemachine.View) error {
		var err error
		out, err = fn(v)
		return err
	})
	return out, err
}

func (r *Replica) withView(fn func(*statemachine.View) error) error {
	rsm := r.store.Range(r.cfg.RangeID)
	if rsm == nil {
		return ErrStopped
	}
	v, err := rsm.View()
	if err != nil {
		return err
	}
	defer v.Close()
	return fn(v)
}

// Read runs fn on a view of the range's state. A linearizable read first
// confirms through ReadIndex that this replica has applied everything committed
// before the call; a serializable read uses the local state as it is.
func (r *Replica) Read(ctx context.Context, linearizable bool, fn func(*statemachine.View) (any, error)) (any, error) {
	if !linearizable {
		return r.localRead(fn)
	}
	return retrying(r, ctx, func() (any, error, bool) { return r.confirmedRead(ctx, fn) })
}

// isSole reports whether the range has this replica as its only voter (see
// Config.SoleVoter).
func (r *Replica) isSole() bool {
	if r.cfg.SoleVoter == nil {
		return false
	}
	return r.sole.Sole(r.cfg.SoleVoter)
}

// NotSole says the range is getting another voter: from now on every
// linearizable read takes a ReadIndex round. Call it before proposing the
// membership change.
func (r *Replica) NotSole() { r.sole.NotSole() }

// confirmedRead runs fn on a view that holds everything committed before
// the call: after a ReadIndex round, or at once on a sole replica that is
// ready as leader (see Config.SoleVoter).
func (r *Replica) confirmedRead(ctx context.Context, fn func(*statemachine.View) (any, error)) (out any, err error, retry bool) {
	if !r.isSole() {
		return r.readOnce(ctx, fn)
	}
	if err := r.leaderReady(ctx); err != nil {
		var nl *NotLeaderError
		return nil, err, errors.As(err, &nl) && nl.LeaderReplicaID == 0
	}
	out, err = r.localRead(fn)
	return out, err, false
}

func (r *Replica) readOnce(ctx context.Context, fn func(*statemachine.View) (any, error)) (out any, err error, retry bool) {
	if err := r.reads.Wait(ctx); err != nil {
		if errors.Is(err, stop.ErrStopping) {
			return nil, ErrStopped, false
		}
		// A read has no effect, so asking again is safe (retrying gives
		// up at its own deadline).
		err, busy := raftBusy(err)
		return nil, err, busy || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrTimeout)
	}
	// The round completed: this replica has applied everything committed
	// before it began.
	out, err = r.localRead(fn)
	return out, err, false
}

// Wake takes this replica out of quiescence, so that it counts election
// ticks again: a caller that found the node of the leader it knows
// unreachable calls it. An idle range quiesces (Dragonboat's Quiesce), and a
// quiesced follower counts no election ticks, so when its leader's node
// dies nothing would make the followers elect a new leader: requests sent
// to the dead leader fail without touching Raft here. A ReadIndex round
// wakes the replica (its outcome does not matter); one at most every
// wakeGap.
func (r *Replica) Wake() {
	now := time.Now().UnixNano()
	last := r.lastWake.Load()
	if now-last < int64(wakeGap) || !r.lastWake.CompareAndSwap(last, now) {
		return
	}
	rs, err := r.nh.ReadIndex(r.cfg.RangeID, r.cfg.RequestTimeout)
	if err != nil {
		return
	}
	if err := r.stopper.RunAsync(func() {
		_, _ = r.await(r.stopper.Context(), rs)
		rs.Release()
	}); err != nil {
		rs.Release()
	}
}

// wakeGap is the least time between two of a replica's Wake rounds.
const wakeGap = 500 * time.Millisecond

// readIndexRound makes one ReadIndex round for the reads sharing it
// (Replica.reads) and waits until this replica has applied its index.
func (r *Replica) readIndexRound() error {
	rs, err := r.nh.ReadIndex(r.cfg.RangeID, r.cfg.RequestTimeout)
	if err != nil {
		return err
	}
	defer rs.Release()
	rr, err := r.await(r.stopper.Context(), rs)
	if err != nil {
		return ErrStopped
	}
	switch {
	case rr.Completed():
		return nil
	case rr.Dropped():
		return ErrNoLeader
	case rr.Timeout():
		// Dragonboat also times out at once a ReadIndex made on a replica
		// that has not yet seen its first tick (its deadline counts from
		// the replica's tick, still 0, and is checked against the node's),
		// which a range just made by a split meets.
		return ErrTimeout
	default:
		return ErrStopped
	}
}
