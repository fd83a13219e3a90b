package watchhub

import (
	"bytes"
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/statemachine"
)

// Source is what the hub needs from its node.
type Source interface {
	// History reads a window of events back from MVCC (see
	// statemachine.Store.History).
	History(key, rangeEnd []byte, fromRev, toRev int64, maxEvents int) ([]*mvccpb.Event, int64, error)
	// CompactedRevision returns the highest compacted revision of the ranges
	// holding keys of etcd's interval [key, rangeEnd).
	CompactedRevision(key, rangeEnd []byte) (int64, error)
	// RangesOf returns the IDs of the node's ranges holding keys of etcd's
	// interval [key, rangeEnd); ok is false while part of it has no range
	// (a split's child not open yet).
	RangesOf(key, rangeEnd []byte) (ids []uint64, ok bool)
	// CloseRange makes this node's replica of the range hold every write at
	// or below a revision at least as high as every revision issued before
	// the call. It returns that revision when the replica has applied them
	// and published their events already (a fenced read on the leader), or
	// 0 when the replica's published floor will show it (a barrier applied
	// through the range's leader).
	CloseRange(ctx context.Context, rangeID uint64) (int64, error)
	// Follow says the hub needs the events of a range (asked every round
	// that does): a range the node holds no replica of is then followed
	// from a node that holds one, publishing as a local replica would. It
	// must not block.
	Follow(rangeID uint64)
	// CurrentRevision returns the highest revision issued so far.
	CurrentRevision(ctx context.Context) (int64, error)
	// Header returns a response header at rev.
	Header(rev int64) *pb.ResponseHeader
	// HasLeader reports whether the node knows a leader of the revision
	// oracle (for watches that require one, as etcdctl's do).
	HasLeader() bool
}

// Config tunes a Hub.
type Config struct {
	// ProgressNotifyInterval is how often watches with progress_notify get a
	// progress notification (etcd's --watch-progress-notify-interval); 0
	// means etcd's default, 10 minutes.
	ProgressNotifyInterval time.Duration
	// MaxRequestBytes: a response to a watch that asked for fragments is
	// split into fragments no larger than this (etcd's --max-request-bytes).
	MaxRequestBytes int
	Logger          *slog.Logger
	// Stopper, when set, is the node's: the hub's goroutines run on a child
	// of it. Without it the hub has a stopper of its own.
	Stopper *stop.Stopper
	// Authorize, when set, decides whether the caller of a stream (its
	// context) may watch etcd's interval [key, rangeEnd); a refusal cancels
	// the watch with the error as its reason, as etcd does.
	Authorize func(ctx context.Context, key, rangeEnd []byte) error
}

// DefaultProgressNotifyInterval is etcd's default.
const DefaultProgressNotifyInterval = 10 * time.Minute

const (
	// streamQueueEvents bounds the events queued for one gRPC stream and not
	// yet sent: a live watcher whose events do not fit is unsynced and
	// catches up from history later, so a stream that does not read holds at
	// most this much.
	streamQueueEvents = 4096
	// streamQueueBytes bounds the bytes queued for one stream the same way.
	// A live delivery's bytes are shared by the watches that take it.
	streamQueueBytes = 16 << 20
	// catchUpEvents bounds the events one history read gathers (and
	// statemachine.HistoryWindowBytes their size).
	catchUpEvents = 1000
	// catchUpRevisions bounds the revisions one history read spans.
	catchUpRevisions = 4 * catchUpEvents
	// catchUpBudgetBytes bounds the history the node's watchers have read
	// and not yet handed to gRPC, across all streams: however many streams
	// catch up at once, or never read, their windows hold at most this.
	catchUpBudgetBytes = 128 << 20
	// responseSplitBytes is the size past which a delivery of several
	// revisions goes in more than one response, so that what a stream
	// that does not read leaves inside gRPC stays small.
	responseSplitBytes = 256 << 10
	// maxBufferedBytes bounds the events the hub buffers for watchers (by
	// statemachine.EventBytes).
	maxBufferedBytes = 64 << 20
	// idleBufferedBytes bounds the buffer (by statemachine.EventBytes)
	// while no watcher is live.
	idleBufferedBytes = 4 << 20
	// maxResponseEvents bounds the events of one response (whole revisions
	// only, so a bigger revision goes whole, or in fragments when asked).
	maxResponseEvents = 1000
	// closeTimeout bounds one attempt to close a range.
	closeTimeout = 5 * time.Second
	// closeRetryPause spaces the attempts to close a range that failed.
	closeRetryPause = 100 * time.Millisecond
)

// Hub merges the node's range events for the Watch service.
type Hub struct {
	pb.UnimplementedWatchServer

	src  Source
	cfg  Config
	log  *slog.Logger
	kick chan struct{}
	// stopper owns the hub's goroutines: its rounds, the calls closing
	// ranges, and every stream's loops.
	stopper *stop.Stopper

	// inMu guards inbox: what ranges published since the last round. The
	// apply path only ever waits for inMu, never for a round.
	inMu  sync.Mutex
	inbox []statemachine.Applied

	mu sync.Mutex
	// floors holds each range's published floor. Guarded by mu.
	floors map[uint64]int64
	// published holds each range's highest event revision published.
	// Guarded by mu.
	published map[uint64]int64
	// maxFloor is the highest floor published. Guarded by mu.
	maxFloor int64
	// continuousFrom: every event above it was published (or will be) by a
	// range that had published everything before it. Ranges that open with
	// history, or install a snapshot, raise it. Guarded by mu.
	continuousFrom int64
	// buf holds the published events above bufBase not yet released to
	// every live watcher, in revision order. Guarded by mu.
	buf     []*mvccpb.Event
	bufBase int64
	// bufBytes is the statemachine.EventBytes of buf's events. Guarded by mu.
	bufBytes int
	// groups holds the live (synced) watchers by interval. Guarded by mu.
	groups map[interval]*group
	// streams are the open Watch streams. Guarded by mu.
	streams map[*stream]struct{}
	// catchUpBytes is the budget of history windows read and not yet sent
	// (catchUpBudgetBytes).
	catchUpBytes *byteBudget
	// closing marks ranges with a close in flight. Guarded by mu.
	closing map[uint64]bool
	// changed is closed and replaced after every round, waking catch-ups.
	// Guarded by mu.
	changed chan struct{}
	// progressWanted: some live watcher or stream may wait for a progress
	// notification, so rounds visit every watcher. Guarded by mu.
	progressWanted bool
}

// group is the live watchers of one interval: they share its safe revision.
type group struct {
	iv       interval
	watchers map[*watcher]struct{}
	// minSent is at most the lowest sentRev of the watchers (exact after a
	// round that visited them), so a round whose safe revision is not above
	// it has nothing to send them.
	minSent int64
}

// New returns a running hub; Stop it.
func New(src Source, cfg Config) *Hub {
	if cfg.ProgressNotifyInterval <= 0 {
		cfg.ProgressNotifyInterval = DefaultProgressNotifyInterval
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = 1536 * 1024
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hub{
		src: src, cfg: cfg, log: log,
		kick:         make(chan struct{}, 1),
		stopper:      stop.ChildOf(cfg.Stopper),
		floors:       map[uint64]int64{},
		published:    map[uint64]int64{},
		groups:       map[interval]*group{},
		streams:      map[*stream]struct{}{},
		catchUpBytes: newByteBudget(catchUpBudgetBytes),
		closing:      map[uint64]bool{},
		changed:      make(chan struct{}),
	}
	_ = h.stopper.RunAsync(h.run)
	return h
}

// Stop ends the hub's work: open streams end (Unavailable), and Stop returns
// once every goroutine of the hub and its streams has.
func (h *Hub) Stop() { h.stopper.Stop() }

// Publish takes what a range replica applied (statemachine.StoreOptions.OnApply).
// It does not wait for watchers: the next round takes it.
func (h *Hub) Publish(a statemachine.Applied) {
	h.inMu.Lock()
	h.inbox = append(h.inbox, a)
	h.inMu.Unlock()
	h.poke()
}

// takeInboxLocked applies what ranges published since the last round.
func (h *Hub) takeInboxLocked() {
	h.inMu.Lock()
	in := h.inbox
	h.inbox = nil
	h.inMu.Unlock()
	for _, a := range in {
		h.applyLocked(a)
	}
}

func (h *Hub) applyLocked(a statemachine.Applied) {
	// A range's events come in revision order, but from two publishers
	// while its replica moves here (a feed from elsewhere until the local
	// replica serves): what was published already is not published again.
	events := a.Events[firstAfter(a.Events, h.published[a.RangeID]):]
	if len(events) > 0 {
		h.published[a.RangeID] = events[len(events)-1].Kv.ModRevision
	}
	if a.Floor > h.floors[a.RangeID] {
		h.floors[a.RangeID] = a.Floor
	}
	h.maxFloor = max(h.maxFloor, a.Floor)
	if a.Reset {
		// The range's events up to its floor may not all have been
		// published (a replica that opened, recovered a snapshot, or
		// started to be followed from elsewhere): live watchers behind it
		// catch up from history, even when another range reset higher
		// before.
		h.continuousFrom = max(h.continuousFrom, a.Floor)
		for _, g := range h.groups {
			for w := range g.watchers {
				if w.sentRev < a.Floor {
					h.unsyncLocked(w)
				}
			}
		}
	}
	h.insertLocked(events)
}

// insertLocked adds one range's events (in revision order) to the buffer,
// keeping it in revision order; events at or below bufBase are dropped (no
// live watcher needs them, and a joining one reads them from history).
func (h *Hub) insertLocked(events []*mvccpb.Event) {
	events = h.notBufferedLocked(events[firstAfter(events, h.bufBase):])
	if len(events) == 0 {
		return
	}
	first := events[0].Kv.ModRevision
	n := len(h.buf)
	h.buf = append(h.buf, events...)
	for _, ev := range events {
		h.bufBytes += statemachine.EventBytes(ev)
	}
	if n == 0 || h.buf[n-1].Kv.ModRevision < first {
		return
	}
	// Another range published the same or higher revisions first: merge.
	// A revision's events from several ranges (a write spanning ranges)
	// end up in key order, as one range gives them.
	from := firstAfter(h.buf[:n], first-1)
	slices.SortFunc(h.buf[from:], EventOrder)
}

// EventOrder orders events as a watch delivers them: by revision, and the
// events of one revision by key (keys are unique within a revision).
func EventOrder(a, b *mvccpb.Event) int {
	if c := cmp.Compare(a.Kv.ModRevision, b.Kv.ModRevision); c != 0 {
		return c
	}
	return bytes.Compare(a.Kv.Key, b.Kv.Key)
}

// notBufferedLocked returns events without those the buffer holds already
// (the same key at the same revision): while a range's replica moves here,
// or splits while it is followed from elsewhere, one write can reach the
// hub from two publishers.
func (h *Hub) notBufferedLocked(events []*mvccpb.Event) []*mvccpb.Event {
	if len(h.buf) == 0 || len(events) == 0 || events[0].Kv.ModRevision > h.buf[len(h.buf)-1].Kv.ModRevision {
		return events
	}
	out := events[:0:0]
	for _, ev := range events {
		dup := false
		for i := firstAfter(h.buf, ev.Kv.ModRevision-1); i < len(h.buf) && h.buf[i].Kv.ModRevision == ev.Kv.ModRevision; i++ {
			if bytes.Equal(h.buf[i].Kv.Key, ev.Kv.Key) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, ev)
		}
	}
	return out
}

// firstAfter returns the index of the first event of events (in revision
// order) above rev.
func firstAfter(events []*mvccpb.Event, rev int64) int {
	i, _ := slices.BinarySearchFunc(events, rev, func(e *mvccpb.Event, rev int64) int {
		return cmp.Compare(e.Kv.ModRevision, rev+1)
	})
	return i
}

// poke asks for a round.
func (h *Hub) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *Hub) run() {
	tick := time.NewTicker(h.cfg.ProgressNotifyInterval)
	defer tick.Stop()
	for {
		select {
		case <-h.stopper.ShouldQuiesce():
			return
		case <-h.kick:
		case <-tick.C:
			h.progressDue()
		}
		h.round()
	}
}

// progressDue asks a progress notification, at the highest revision
// published so far, of every live watcher that wants them and was sent no
// events since the last tick (as etcd does).
func (h *Hub) progressDue() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, g := range h.groups {
		for w := range g.watchers {
			if w.progressNotify && !w.sentSinceTick {
				w.progressTarget = max(w.progressTarget, h.maxFloor)
				h.progressWanted = true
			}
			w.sentSinceTick = false
		}
	}
}

// round releases to every live watcher the buffered events up to its
// interval's safe revision, answers the progress requests that can be, asks
// lagging ranges to close, and trims the buffer.
func (h *Hub) round() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.takeInboxLocked()
	minSent, anyLive := int64(0), false
	visitAll := h.progressWanted
	h.progressWanted = false
	holds := h.progressHoldsLocked()
	for _, g := range h.groups {
		safe, ids, ok := h.safeLocked(g.iv)
		var want int64 // the revision the group's ranges should close to
		if len(g.watchers) == 0 {
			delete(h.groups, g.iv)
			continue
		}
		if !visitAll && (!ok || safe <= g.minSent) {
			// Nothing to send and no progress owed: skip the watchers.
			if !anyLive || g.minSent < minSent {
				minSent, anyLive = g.minSent, true
			}
			if ok {
				if want = h.pendingLocked(g.iv, safe); want > safe {
					h.closeLocked(ids, want)
				}
			}
			continue
		}
		groupMin, first := int64(0), true
		// The group's watchers are mostly at the same revision: find the
		// events after each revision once.
		after := map[[2]int64][]*mvccpb.Event{}
		shared := map[deliveryShape][]encodedResponse{}
		for w := range g.watchers {
			upTo := safe
			if t, held := holds[w.s]; held && t < upTo && t >= w.sentRev {
				upTo = t
			}
			if ok && upTo > w.sentRev {
				span := [2]int64{w.sentRev, upTo}
				evs, found := after[span]
				if !found {
					evs = h.eventsLocked(g.iv, w.sentRev, upTo)
					after[span] = evs
				}
				if len(evs) > 0 {
					if !w.deliver(evs, upTo, shared) {
						h.unsyncLocked(w)
						continue
					}
					w.sentSinceTick = true
					w.eventRev = evs[len(evs)-1].Kv.ModRevision
				}
				w.sentRev = upTo
			}
			if t := w.progressTarget; t > 0 {
				if w.sentRev >= t {
					if w.s.offer(w.progressResponse(w.sentRev)) {
						w.progressTarget, w.progressRev = 0, w.sentRev
					}
				} else {
					want = max(want, t)
				}
				h.progressWanted = h.progressWanted || w.progressTarget > 0
			}
			if t := w.s.progressTarget; t > w.sentRev {
				want = max(want, t)
			}
			if first || w.sentRev < groupMin {
				groupMin, first = w.sentRev, false
			}
		}
		if first { // every watcher was unsynced
			delete(h.groups, g.iv)
			continue
		}
		g.minSent = groupMin
		if !anyLive || groupMin < minSent {
			minSent, anyLive = groupMin, true
		}
		if ok {
			want = max(want, h.pendingLocked(g.iv, safe))
			if want > safe {
				h.closeLocked(ids, want)
			}
		}
	}
	for s := range h.streams {
		h.answerProgressLocked(s)
		h.progressWanted = h.progressWanted || s.progressTarget > 0
	}
	// Trim what no watcher can need: live ones have been sent everything up
	// to their sentRev, and one joining reads history up to its ranges'
	// floors, never below the lowest floor of all. (Trimming above that
	// would make joiners chase a base that their own ranges' closings
	// raise.) Idle ranges hold the lowest floor back: when the buffer grows
	// while watchers are live, they are closed; past a bound on memory the
	// oldest events go anyway, and watchers behind them catch up from
	// history. While no watcher is live the bound is idleBufferedBytes: a
	// watcher that comes later catches up from history the same way
	// (closing its own ranges as far as it needs). Closing every idle range
	// instead would wake them all (a quiesced Raft group answers a ReadIndex
	// with heartbeats) whenever any range is busy, and keeping
	// maxBufferedBytes with nobody watching would hold that much heap after
	// a load.
	base := h.lowestFloorLocked()
	limit := idleBufferedBytes
	if anyLive {
		base = min(base, minSent)
		limit = maxBufferedBytes
		if h.bufBytes > maxBufferedBytes/2 {
			h.closeLaggingLocked(h.buf[len(h.buf)/2].Kv.ModRevision)
		}
	}
	if over := h.bufBytes - limit; over > 0 {
		for _, ev := range h.buf {
			base = max(base, ev.Kv.ModRevision)
			if over -= statemachine.EventBytes(ev); over <= 0 {
				break
			}
		}
	}
	if base > h.bufBase {
		for _, g := range h.groups {
			for w := range g.watchers {
				if w.sentRev < base {
					h.unsyncLocked(w)
				}
			}
		}
		i := firstAfter(h.buf, base)
		for _, ev := range h.buf[:i] {
			h.bufBytes -= statemachine.EventBytes(ev)
		}
		clear(h.buf[:i])
		h.buf = h.buf[i:]
		h.bufBase = base
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// progressHoldsLocked returns, for each stream that owes a progress
// notification and whose watches are all live, the notification's target:
// a round sends those watches nothing above it until it is answered, so
// that none runs ahead of the others while their ranges close
// (answerProgressLocked). A stream with a watch still catching up from
// history is not held: the answer waits for that watch anyway, and the
// others' events keep flowing meanwhile.
func (h *Hub) progressHoldsLocked() map[*stream]int64 {
	var holds map[*stream]int64
	for s := range h.streams {
		if s.progressTarget == 0 {
			continue
		}
		allLive := true
		for _, w := range s.watchers {
			if !w.live {
				allLive = false
				break
			}
		}
		if allLive {
			if holds == nil {
				holds = map[*stream]int64{}
			}
			holds[s] = s.progressTarget
		}
	}
	return holds
}

// lowestFloorLocked returns the lowest floor of all ranges.
func (h *Hub) lowestFloorLocked() int64 {
	lowest, first := int64(0), true
	for _, f := range h.floors {
		if first || f < lowest {
			lowest, first = f, false
		}
	}
	return lowest
}

// closeLaggingLocked closes every range whose floor is below rev up to the
// highest floor.
func (h *Hub) closeLaggingLocked(rev int64) {
	var ids []uint64
	for id, f := range h.floors {
		if f < rev {
			ids = append(ids, id)
		}
	}
	h.closeLocked(ids, h.maxFloor)
}

// safeLocked returns the lowest floor of the ranges holding iv's keys, and
// their IDs; ok is false when some part of iv has no range, or a range has
// not published yet.
func (h *Hub) safeLocked(iv interval) (safe int64, ids []uint64, ok bool) {
	ids, ok = h.src.RangesOf(iv.keyBytes(), iv.endBytes())
	if !ok || len(ids) == 0 {
		return 0, nil, false
	}
	for _, id := range ids {
		h.src.Follow(id)
	}
	for i, id := range ids {
		f, known := h.floors[id]
		if !known {
			return 0, nil, false
		}
		if i == 0 || f < safe {
			safe = f
		}
	}
	return safe, ids, true
}

// eventsLocked returns the buffered events of iv in (after, upTo].
func (h *Hub) eventsLocked(iv interval, after, upTo int64) []*mvccpb.Event {
	i := firstAfter(h.buf, after)
	var out []*mvccpb.Event
	for ; i < len(h.buf) && h.buf[i].Kv.ModRevision <= upTo; i++ {
		if iv.contains(h.buf[i].Kv.Key) {
			out = append(out, h.buf[i])
		}
	}
	return out
}

// pendingLocked returns the highest revision of a buffered event of iv above
// safe, or 0.
func (h *Hub) pendingLocked(iv interval, safe int64) int64 {
	for i := len(h.buf) - 1; i >= 0 && h.buf[i].Kv.ModRevision > safe; i-- {
		if iv.contains(h.buf[i].Kv.Key) {
			return h.buf[i].Kv.ModRevision
		}
	}
	return 0
}

// closeLocked closes, in the background, the ranges among ids whose floor is
// below target and that have no close in flight.
func (h *Hub) closeLocked(ids []uint64, target int64) {
	for _, id := range ids {
		if h.floors[id] >= target || h.closing[id] {
			continue
		}
		if err := h.stopper.RunAsync(func() { h.closeRange(id) }); err != nil {
			return // stopping
		}
		h.closing[id] = true
	}
}

func (h *Hub) closeRange(id uint64) {
	ctx, cancel := h.stopper.WithTimeout(closeTimeout)
	closed, err := h.src.CloseRange(ctx, id)
	cancel()
	if closed > 0 {
		// Every event at or below closed is in the inbox already (ranges
		// publish before their writes complete): the next round takes the
		// inbox before it uses this floor.
		h.mu.Lock()
		if closed > h.floors[id] {
			h.floors[id] = closed
			h.maxFloor = max(h.maxFloor, closed)
		}
		h.mu.Unlock()
	}
	if err != nil {
		h.log.Debug("closing a range for watches", "range", id, "err", err)
		select {
		case <-h.stopper.ShouldQuiesce():
		case <-time.After(closeRetryPause):
		}
	}
	h.mu.Lock()
	delete(h.closing, id)
	h.mu.Unlock()
	h.poke()
}

// joinLocked makes w live: it receives buffered events after w.sentRev.
// The caller checked that the buffer holds them (w.sentRev >= bufBase and
// >= continuousFrom).
func (h *Hub) joinLocked(w *watcher) {
	g := h.groups[w.iv]
	if g == nil {
		g = &group{iv: w.iv, watchers: map[*watcher]struct{}{}}
		h.groups[w.iv] = g
	}
	if len(g.watchers) == 0 || w.sentRev < g.minSent {
		g.minSent = w.sentRev
	}
	g.watchers[w] = struct{}{}
	w.live = true
}

// canJoinLocked reports whether the buffer holds every event w needs next.
func (h *Hub) canJoinLocked(w *watcher) bool {
	return w.sentRev >= h.bufBase && w.sentRev >= h.continuousFrom
}

// unsyncLocked takes a live watcher out of the live groups; its stream's
// catch-up brings it back.
func (h *Hub) unsyncLocked(w *watcher) {
	if !w.live {
		return
	}
	if g := h.groups[w.iv]; g != nil {
		delete(g.watchers, w)
	}
	w.live = false
	w.s.wakeCatchUp()
}

// removeLocked forgets w.
func (h *Hub) removeLocked(w *watcher) {
	h.unsyncLocked(w)
	w.removed = true
}

// answerProgressLocked answers s's RequestProgress once every watcher on it
// is live and has been sent everything up to the revision current when the
// request came.
func (h *Hub) answerProgressLocked(s *stream) {
	t := s.progressTarget
	if t == 0 {
		return
	}
	rev, told, highest := int64(-1), int64(0), int64(0)
	for _, w := range s.watchers {
		if !w.live || w.sentRev < t {
			return
		}
		if rev < 0 || w.sentRev < rev {
			rev = w.sentRev
		}
		told = max(told, w.progressRev, w.eventRev)
		highest = max(highest, w.sentRev)
	}
	if rev < 0 {
		rev = t
	}
	if rev < told {
		// A watch of the stream was told more already, or was sent an
		// event above rev: wait until every watch has been sent as far as
		// the furthest (another round has the ranges behind them closed).
		// Every watch is then at or below the target, where rounds hold
		// them (progressHolds), so the next answer cannot be put off again.
		s.progressTarget = max(told, highest)
		h.poke()
		return
	}
	if s.offer(&pb.WatchResponse{Header: h.src.Header(rev), WatchId: -1}) {
		s.progressTarget = 0
		for _, w := range s.watchers {
			w.progressRev = rev
		}
		// Its watches may have been held at rev (progressHoldsLocked) with
		// events waiting above it: another round sends them.
		h.poke()
	}
}
