package watchhub

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// etcd's answers to a create request it refuses (mvcc package errors).
var (
	errDuplicateWatchID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")
	errEmptyWatchRange  = errors.New("mvcc: watcher range is empty")
	errCompacted        = errors.New(rpctypes.ErrorDesc(rpctypes.ErrGRPCCompacted))
	errMemberStopping   = status.Error(codes.Unavailable, "tessera: the member is stopping; resume the watch")
)

// catchUpPause is how long a catch-up waits for the hub when it cannot make
// progress yet (its ranges are closing).
const catchUpPause = 50 * time.Millisecond

// stream is one Watch gRPC stream: its watchers, its bounded send queue, its
// catch-up of unsynced watchers.
type stream struct {
	hub *Hub
	srv pb.Watch_WatchServer
	ctx context.Context

	// watchers by ID, nextID for server-chosen IDs, and progressTarget (a
	// RequestProgress waiting, at the revision current when it came) are
	// guarded by hub.mu.
	watchers       map[int64]*watcher
	nextID         int64
	progressTarget int64

	// qmu guards the send queue.
	qmu      sync.Mutex
	queue    []queued
	qEvents  int  // events queued in all
	qBytes   int  // bytes of the queued responses that carry events
	sendDone bool // sendLoop has ended: nothing more is queued
	sendable chan struct{}
	drained  chan struct{}

	catchUp chan struct{}
}

// Watch serves etcd's Watch RPC.
func (h *Hub) Watch(srv pb.Watch_WatchServer) error {
	if requiresLeader(srv.Context()) && !h.src.HasLeader() {
		return rpctypes.ErrGRPCNoLeader // as etcd answers such a watch
	}
	ctx, cancel := context.WithCancel(srv.Context())
	defer cancel()
	s := &stream{
		hub: h, srv: srv, ctx: ctx,
		watchers: map[int64]*watcher{},
		sendable: make(chan struct{}, 1),
		drained:  make(chan struct{}, 1),
		catchUp:  make(chan struct{}, 1),
	}
	h.mu.Lock()
	h.streams[s] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		for _, w := range s.watchers {
			h.removeLocked(w)
		}
		delete(h.streams, s)
		h.mu.Unlock()
	}()
	errc := make(chan error, 3)
	for _, loop := range []func(){
		func() { errc <- s.sendLoop() },
		s.catchUpLoop,
		func() {
			if err := s.recvLoop(); err != nil {
				errc <- err
			}
			// io.EOF: the client sends no more requests but still reads.
		},
	} {
		if err := h.stopper.RunAsync(loop); err != nil {
			return errMemberStopping
		}
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-h.stopper.ShouldQuiesce():
		// Unavailable, so clients resume the watches elsewhere (or here
		// after a restart) from the revision after their last event.
		return errMemberStopping
	}
}

func (s *stream) recvLoop() error {
	for {
		req, err := s.srv.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			s.create(r.CreateRequest)
		case *pb.WatchRequest_CancelRequest:
			s.cancel(r.CancelRequest.GetWatchId())
		case *pb.WatchRequest_ProgressRequest:
			s.requestProgress()
		}
	}
}

// currentRevision is the revision a new watch starts after, and the header
// of control responses: the oracle's, or the highest floor seen when the
// oracle cannot be reached.
func (s *stream) currentRevision() int64 {
	ctx, cancel := context.WithTimeout(s.ctx, closeTimeout)
	defer cancel()
	rev, err := s.hub.src.CurrentRevision(ctx)
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	if err != nil {
		return s.hub.maxFloor
	}
	return max(rev, s.hub.maxFloor)
}

func (s *stream) create(c *pb.WatchCreateRequest) {
	h := s.hub
	key, end := c.Key, c.RangeEnd
	if len(key) == 0 {
		key = []byte{0} // the smallest key, as etcd does
	}
	current := s.currentRevision()
	refuse := func(err error) {
		s.offer(&pb.WatchResponse{Header: h.src.Header(current), WatchId: -1, Created: true, Canceled: true, CancelReason: err.Error()})
	}
	if len(end) > 0 && !(len(end) == 1 && end[0] == 0) && bytes.Compare(key, end) >= 0 {
		refuse(errEmptyWatchRange)
		return
	}
	if c.StartRevision < 0 {
		refuse(errCompacted) // etcd's answer to a negative start
		return
	}
	if auth := h.cfg.Authorize; auth != nil {
		if err := auth(s.ctx, c.Key, c.RangeEnd); err != nil {
			refuse(err)
			return
		}
	}
	w := &watcher{
		s: s, iv: newInterval(key, end),
		prevKV: c.PrevKv, fragment: c.Fragment, progressNotify: c.ProgressNotify,
		sentRev: current,
	}
	for _, f := range c.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	if c.StartRevision > 0 {
		w.sentRev = c.StartRevision - 1
	}
	h.mu.Lock()
	if c.WatchId != 0 {
		if _, used := s.watchers[c.WatchId]; used {
			h.mu.Unlock()
			refuse(errDuplicateWatchID)
			return
		}
		w.id = c.WatchId
	} else {
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		w.id = s.nextID
		s.nextID++
	}
	w.idField = watchIDField(w.id)
	s.watchers[w.id] = w
	// The created answer goes first; events can only be queued after it.
	s.offer(&pb.WatchResponse{Header: h.src.Header(current), WatchId: w.id, Created: true})
	// This member's replicas may lag (a follower just restarted, its ranges
	// quiesced): have the watched ranges close up to the revision current
	// now, so everything up to it reaches this member without waiting for
	// the next write.
	if ids, ok := h.src.RangesOf(w.iv.keyBytes(), w.iv.endBytes()); ok {
		h.closeLocked(ids, current)
	}
	if c.StartRevision > 0 {
		// From the past: the catch-up checks the start against compaction
		// (and reads history if need be) before the watch joins.
		w.checkCompacted = true
		s.wakeCatchUp()
	} else if h.canJoinLocked(w) {
		h.joinLocked(w)
	} else {
		s.wakeCatchUp()
	}
	h.mu.Unlock()
	h.poke()
}

func (s *stream) cancel(id int64) {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w := s.watchers[id]
	if w == nil {
		return // etcd answers nothing for an unknown ID
	}
	h.removeLocked(w)
	delete(s.watchers, id)
	s.offer(&pb.WatchResponse{Header: h.src.Header(max(w.sentRev, 0)), WatchId: id, Canceled: true})
}

func (s *stream) requestProgress() {
	rev := s.currentRevision()
	s.hub.mu.Lock()
	s.progressTarget = max(s.progressTarget, rev)
	s.hub.progressWanted = true
	s.hub.mu.Unlock()
	s.hub.poke()
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// queued is a response waiting in a stream's send queue.
type queued struct {
	msg    proto.Message // *pb.WatchResponse or *wireResponse
	events int
	bytes  int // its size, when it carries events
	// charged is what it holds of the hub's catch-up budget, given back
	// once it is sent.
	charged int
}

// offer queues one response without events (control answers and progress
// notifications): such responses always fit.
func (s *stream) offer(resp proto.Message) bool {
	return s.offerAll([]queued{{msg: resp}})
}

// offerAll queues responses (the fragments of one delivery) together or
// not at all: not when they carry events and the queue, not empty, would
// then hold more than streamQueueEvents events or streamQueueBytes bytes,
// nor once the stream's sending has ended.
func (s *stream) offerAll(resps []queued) bool {
	events, size := 0, 0
	for _, r := range resps {
		events += r.events
		size += r.bytes
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.sendDone {
		return false
	}
	if events > 0 && s.qEvents > 0 && (s.qEvents+events > streamQueueEvents || s.qBytes+size > streamQueueBytes) {
		return false
	}
	s.queue = append(s.queue, resps...)
	s.qEvents += events
	s.qBytes += size
	signal(s.sendable)
	return true
}

// roomForCatchUp reports whether the queue can take a window of history:
// at most half full.
func (s *stream) roomForCatchUp() bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.qEvents <= streamQueueEvents/2 && s.qBytes <= streamQueueBytes/2
}

// offerWait queues responses of w, waiting for room; false when w was
// cancelled or the stream ended first. Nothing is queued once w is
// cancelled: the check and the queueing happen under the hub's lock, as the
// cancel answer's queueing does, so no event follows that answer.
func (s *stream) offerWait(w *watcher, resps []queued) bool {
	for {
		s.hub.mu.Lock()
		removed := w.removed
		queued := !removed && s.offerAll(resps)
		s.hub.mu.Unlock()
		if removed || queued {
			return queued
		}
		select {
		case <-s.ctx.Done():
			return false
		case <-s.drained:
		}
	}
}

func (s *stream) sendLoop() error {
	defer func() {
		// What is left unsent gives its catch-up budget back.
		s.qmu.Lock()
		s.sendDone = true
		for _, r := range s.queue {
			s.hub.catchUpBytes.give(r.charged)
		}
		s.queue = nil
		s.qmu.Unlock()
	}()
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-s.sendable:
		}
		for {
			s.qmu.Lock()
			if len(s.queue) == 0 {
				s.qmu.Unlock()
				break
			}
			r := s.queue[0]
			s.queue[0] = queued{}
			s.queue = s.queue[1:]
			s.qmu.Unlock()
			err := s.srv.SendMsg(r.msg)
			s.hub.catchUpBytes.give(r.charged)
			if err != nil {
				return err
			}
			s.qmu.Lock()
			s.qEvents -= r.events
			s.qBytes -= r.bytes
			s.qmu.Unlock()
			signal(s.drained)
		}
	}
}

func (s *stream) wakeCatchUp() { signal(s.catchUp) }

// catchUpLoop brings the stream's unsynced watchers up to date from history
// until each can join the live buffer: one step (one window of history) for
// each in turn, so one that has to wait for its ranges holds up no other.
func (s *stream) catchUpLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.catchUp:
		}
		for {
			if !s.roomForCatchUp() {
				// Nothing to read until the client takes what is queued:
				// wait for it rather than poll.
				select {
				case <-s.ctx.Done():
					return
				case <-s.drained:
				}
				continue
			}
			s.hub.mu.Lock()
			changed := s.hub.changed
			var behind []*watcher
			for _, w := range s.watchers {
				if !w.live && !w.removed {
					behind = append(behind, w)
				}
			}
			s.hub.mu.Unlock()
			if len(behind) == 0 {
				break
			}
			waiting := true
			for _, w := range behind {
				switch s.catchUpStep(w) {
				case stepEnded:
					return
				case stepWait:
				default:
					waiting = false
				}
			}
			if waiting {
				select {
				case <-s.ctx.Done():
					return
				case <-changed:
				case <-time.After(catchUpPause):
				}
			}
		}
	}
}

// What one catch-up step did.
type stepResult int

const (
	stepDone  stepResult = iota // joined the live buffer, or removed
	stepMoved                   // read and sent a window of history
	stepWait                    // nothing readable yet
	stepEnded                   // the stream ended
)

// catchUpStep moves w on: it checks a new watch's start against
// compaction, joins it to the live buffer when the buffer holds what it
// needs next, or reads and sends the next window of its history.
func (s *stream) catchUpStep(w *watcher) stepResult {
	h := s.hub
	h.mu.Lock()
	if w.removed {
		h.mu.Unlock()
		return stepDone
	}
	if w.checkCompacted {
		h.mu.Unlock()
		compacted, err := h.src.CompactedRevision(w.iv.keyBytes(), w.iv.endBytes())
		if err != nil {
			h.log.Warn("reading the compacted revision", "err", err)
			return stepWait
		}
		h.mu.Lock()
		w.checkCompacted = false
		if w.sentRev+1 < compacted {
			h.mu.Unlock()
			s.compacted(w, compacted)
			return stepDone
		}
	}
	if h.canJoinLocked(w) {
		h.joinLocked(w)
		h.mu.Unlock()
		h.poke()
		return stepDone
	}
	safe, ids, ok := h.safeLocked(w.iv)
	from := w.sentRev + 1
	if !ok || safe < from {
		// Nothing readable yet: have the ranges close up to where the
		// buffer continues.
		if ok {
			h.closeLocked(ids, max(h.bufBase, h.continuousFrom, from))
		}
		h.mu.Unlock()
		return stepWait
	}
	h.mu.Unlock()
	// A window is read only when the stream's queue has room for it, and
	// within the hub's catch-up budget until it is sent.
	if !s.roomForCatchUp() {
		return stepWait
	}
	const reserve = statemachine.HistoryWindowBytes
	if !h.catchUpBytes.take(s.ctx, reserve) {
		return stepEnded
	}
	// A window spans at most catchUpRevisions: each range under the watch
	// reads its part of the window, and one with no events there would
	// otherwise read all of its history up to safe to say so, every window.
	to := min(safe, from+catchUpRevisions-1)
	events, covered, err := h.src.History(w.iv.keyBytes(), w.iv.endBytes(), from, to, catchUpEvents)
	var compacted *statemachine.CompactedError
	switch {
	case errors.As(err, &compacted):
		h.catchUpBytes.give(reserve)
		s.compacted(w, compacted.CompactRevision)
		return stepDone
	case err != nil:
		h.catchUpBytes.give(reserve)
		h.log.Warn("reading watch history", "key", w.iv.key, "from", from, "err", err)
		return stepWait
	}
	resps := w.queued(w.encode(events, covered))
	size := 0
	for i := range resps {
		resps[i].charged = resps[i].bytes
		size += resps[i].bytes
	}
	h.catchUpBytes.give(reserve - size)
	if len(resps) > 0 && !s.offerWait(w, resps) {
		h.catchUpBytes.give(size)
		if s.ctx.Err() != nil {
			return stepEnded
		}
		return stepDone // cancelled meanwhile
	}
	h.mu.Lock()
	if !w.removed {
		w.sentRev = covered
		w.sentSinceTick = w.sentSinceTick || len(events) > 0
		if len(events) > 0 {
			w.eventRev = events[len(events)-1].Kv.ModRevision
		}
	}
	h.mu.Unlock()
	return stepMoved
}

// compacted cancels w, whose start is below the compacted revision, with
// etcd's answer.
func (s *stream) compacted(w *watcher, compactRev int64) {
	h := s.hub
	h.mu.Lock()
	h.removeLocked(w)
	delete(s.watchers, w.id)
	current := max(h.maxFloor, w.sentRev)
	h.mu.Unlock()
	s.offer(&pb.WatchResponse{
		Header: h.src.Header(current), WatchId: w.id,
		CompactRevision: compactRev, Canceled: true,
	})
}

// requiresLeader reports whether the client asked that the watch be served
// only by a member with a leader (clientv3.WithRequireLeader).
func requiresLeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	for _, v := range md.Get(rpctypes.MetadataRequireLeaderKey) {
		if v == rpctypes.MetadataHasLeader {
			return true
		}
	}
	return false
}
