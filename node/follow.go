package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/statemachine"
	"github.com/tesserakv/tessera/watchhub"
)

// Watches of ranges held elsewhere. The watch hub merges what ranges
// publish by their closed revisions; a range this node has no replica of
// publishes through a follower: an Internal.RangeFeed from a node holding
// it, whose events and closed revisions go to the hub as a local replica's
// applied events and floors would. Catch-up reads of such a range's history
// go to a node holding it (Internal.RangeHistory).

const (
	// feedIdle is how long a feed runs after the hub last asked for its
	// range (every round that needs the range asks).
	feedIdle = 30 * time.Second
	// feedRetryPause spaces a feed's attempts after a failure.
	feedRetryPause = 100 * time.Millisecond
)

// feeds are the ranges this node follows, with when the hub last asked.
type feeds struct {
	mu     sync.Mutex
	wanted map[uint64]time.Time // guarded by mu
}

// follow makes sure the hub gets the events of a range this node holds no
// replica of (the hub asks for every range of every watched interval, each
// round). It never blocks.
func (s *Node) follow(rangeID uint64) {
	if s.servesLocally(rangeID) {
		return
	}
	now := time.Now()
	s.feeds.mu.Lock()
	_, running := s.feeds.wanted[rangeID]
	s.feeds.wanted[rangeID] = now
	s.feeds.mu.Unlock()
	if running {
		return
	}
	if err := s.stopper.RunAsync(func() { s.runFeed(rangeID) }); err != nil {
		s.feeds.mu.Lock()
		delete(s.feeds.wanted, rangeID)
		s.feeds.mu.Unlock()
	}
}

// servesLocally reports whether a replica here has the range's state open
// (and so publishes its events itself): a replica still joining the range
// does not, and its range is followed meanwhile.
func (s *Node) servesLocally(rangeID uint64) bool { return s.store.Range(rangeID) != nil }

// stillWanted reports whether the hub asked for the range lately, and if
// not, forgets it (the next ask starts a new feed).
func (s *Node) stillWanted(rangeID uint64) bool {
	s.feeds.mu.Lock()
	defer s.feeds.mu.Unlock()
	if time.Since(s.feeds.wanted[rangeID]) < feedIdle && !s.servesLocally(rangeID) {
		return true
	}
	delete(s.feeds.wanted, rangeID)
	return false
}

// errFeedCompacted: the feed's start is below the range's compaction.
var errFeedCompacted = errors.New("range feed start compacted")

// runFeed follows one range until it is no longer wanted (or a replica
// here serves it). It starts at the oracle's current revision, which it publishes
// as a reset (watches behind it catch up from history), and after a failure
// resumes after the last closed revision it published, from another
// replica, so that the hub sees every event once.
func (s *Node) runFeed(rangeID uint64) {
	ctx := s.stopper.Context()
	var last int64 // the closed revision published last (0: none yet)
	for attempt := 0; ctx.Err() == nil && s.stillWanted(rangeID); attempt++ {
		if last == 0 {
			cur, err := s.oracle.Current(ctx)
			if err != nil {
				s.pause(feedRetryPause)
				continue
			}
			last = cur
			s.hub.Publish(statemachine.Applied{RangeID: rangeID, Floor: cur, Reset: true})
		}
		err := s.router.OnReplica(ctx, rangeID, func(ctx context.Context, cc *grpc.ClientConn) error {
			return s.streamFeed(ctx, cc, rangeID, &last)
		})
		switch {
		case errors.Is(err, errFeedCompacted):
			last = 0
		case errors.Is(err, router.ErrNoRange):
			// Not routed elsewhere any more (held here now, or the
			// cache is being rebuilt): ask again.
			s.pause(feedRetryPause)
		case err != nil && ctx.Err() == nil:
			s.log.Debug("following a range", "range", rangeID, "err", err)
			s.pause(feedRetryPause)
		}
	}
}

// pause waits d, or until the node stops.
func (s *Node) pause(d time.Duration) {
	select {
	case <-s.stopper.ShouldQuiesce():
	case <-time.After(d):
	}
}

// streamFeed runs one RangeFeed from the revision after *last and publishes
// what it gets, raising *last. It ends when the range is no longer wanted.
func (s *Node) streamFeed(ctx context.Context, cc *grpc.ClientConn, rangeID uint64, last *int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &tesserapb.RangeFeedRequest{RangeId: rangeID, StartRevision: *last + 1}
	if d := s.cache.Remote(rangeID); d != nil {
		// The keys this node routes to the range now, so that its floor
		// covers every key this node's watches count it for: the source
		// may have split them off already.
		req.StartKey, req.EndKey = d.StartKey, d.EndKey
		if len(req.StartKey) == 0 {
			req.StartKey = []byte{0}
		}
	}
	feed, err := tesserapb.NewInternalClient(cc).RangeFeed(ctx, req)
	if err != nil {
		return err
	}
	for {
		msg, err := feed.Recv()
		if err == io.EOF {
			return status.Error(codes.Unavailable, "tessera: range feed ended")
		}
		if err != nil {
			return err
		}
		if msg.CompactRevision > 0 {
			return errFeedCompacted
		}
		// The feed covers the keys this node routed to the range when it
		// started, those a split has given another range since among them:
		// their events may come twice (here and from that range), and the
		// hub keeps one.
		events, err := decodeEvents(msg.Events)
		if err != nil {
			return err
		}
		if msg.ClosedRevision > *last || len(events) > 0 {
			s.hub.Publish(statemachine.Applied{RangeID: rangeID, Events: events, Floor: max(*last, msg.ClosedRevision)})
			*last = max(*last, msg.ClosedRevision)
		}
		if !s.stillWanted(rangeID) {
			return nil
		}
	}
}

// decodeEvents decodes the marshalled etcd events of a range feed or a
// history read from another node (encodeEvents).
func decodeEvents(raw [][]byte) ([]*mvccpb.Event, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	out := make([]*mvccpb.Event, len(raw))
	for i, b := range raw {
		out[i] = &mvccpb.Event{}
		if err := proto.Unmarshal(b, out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// encodeEvents marshals etcd events for another node (decodeEvents).
func encodeEvents(events []*mvccpb.Event) ([][]byte, error) {
	var out [][]byte
	for _, ev := range events {
		b, err := proto.Marshal(ev)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// keyIn reports whether key is in [start, end) (end empty: no end).
func keyIn(key, start, end []byte) bool {
	return bytes.Compare(key, start) >= 0 && (len(end) == 0 || bytes.Compare(key, end) < 0)
}

// history reads the events of etcd's interval [key, rangeEnd) at revisions
// fromRev..toRev for the hub: from this node's store for the ranges held
// here, from a node holding each of the others, merged in revision order
// and cut at the lowest revision every part covers.
func (s *Node) history(key, rangeEnd []byte, fromRev, toRev int64, maxEvents int) ([]*mvccpb.Event, int64, error) {
	parts, ok := s.router.PartsOf(key, rangeEnd)
	if !ok {
		return nil, 0, router.ErrNoRange
	}
	if !slices.ContainsFunc(parts, func(p router.Part) bool { return !s.holdsUpTo(p, toRev) }) {
		// Every part is here and complete to toRev: one read of the store.
		return s.store.History(key, rangeEnd, fromRev, toRev, maxEvents)
	}
	// The parts are read at once: a watch over many ranges held elsewhere
	// waits for the slowest node, not for the sum of them.
	type partRead struct {
		events []*mvccpb.Event
		to     int64
		err    error
	}
	reads := make([]partRead, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Go(func() {
			r := &reads[i]
			r.events, r.to, r.err = s.partHistory(p, fromRev, toRev, maxEvents)
		})
	}
	wg.Wait()
	var all []*mvccpb.Event
	covered := toRev
	for _, r := range reads {
		if r.err != nil {
			return nil, 0, r.err
		}
		covered = min(covered, r.to)
		all = append(all, r.events...)
	}
	slices.SortFunc(all, watchhub.EventOrder)
	cut, _ := slices.BinarySearchFunc(all, covered+1, func(e *mvccpb.Event, rev int64) int { return cmp.Compare(e.Kv.ModRevision, rev) })
	return all[:cut], covered, nil
}

// holdsUpTo reports whether a part's range is served here with every
// command at or below rev applied.
func (s *Node) holdsUpTo(p router.Part, rev int64) bool {
	if !p.Local {
		return false
	}
	rsm := s.store.Range(p.RangeID)
	return rsm != nil && rsm.Floor() >= rev
}

// historyTimeout bounds one history read from another node.
const historyTimeout = 10 * time.Second

func (s *Node) partHistory(p router.Part, fromRev, toRev int64, maxEvents int) ([]*mvccpb.Event, int64, error) {
	if p.Local {
		// The hub judged toRev readable by the floors of the ranges as it
		// routed them then; a replica that has opened here since (a move)
		// may not have applied that far yet.
		if !s.holdsUpTo(p, toRev) {
			ctx, cancel := s.stopper.WithTimeout(historyTimeout)
			err := s.router.CatchUp(ctx, p.RangeID, toRev)
			cancel()
			if err != nil {
				return nil, 0, err
			}
		}
		return s.store.History(p.Key, p.End, fromRev, toRev, maxEvents)
	}
	resp, err := s.remoteHistory(p, fromRev, toRev, int64(maxEvents))
	if err != nil {
		return nil, 0, err
	}
	if resp.CompactedRevision >= fromRev {
		return nil, 0, &statemachine.CompactedError{CompactRevision: resp.CompactedRevision}
	}
	events, err := decodeEvents(resp.Events)
	if err != nil {
		return nil, 0, err
	}
	return events, resp.CoveredTo, nil
}

func (s *Node) remoteHistory(p router.Part, fromRev, toRev, maxEvents int64) (*tesserapb.RangeHistoryResponse, error) {
	ctx, cancel := s.stopper.WithTimeout(historyTimeout)
	defer cancel()
	var resp *tesserapb.RangeHistoryResponse
	err := s.router.OnReplica(ctx, p.RangeID, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = tesserapb.NewInternalClient(cc).RangeHistory(ctx, &tesserapb.RangeHistoryRequest{
			RangeId: p.RangeID, Key: p.Key, RangeEnd: p.End, FromRevision: fromRev, ToRevision: toRev, MaxEvents: maxEvents,
		})
		return err
	})
	return resp, err
}

// compactedRevision returns the highest compacted revision of the ranges
// holding keys of etcd's interval [key, rangeEnd), asking a node holding
// each range held elsewhere.
func (s *Node) compactedRevision(key, rangeEnd []byte) (int64, error) {
	parts, ok := s.router.PartsOf(key, rangeEnd)
	if !ok {
		return 0, router.ErrNoRange
	}
	var compacted int64
	for _, p := range parts {
		var c int64
		var err error
		if p.Local {
			c, err = s.store.CompactedRevision(p.Key, p.End)
		} else {
			var resp *tesserapb.RangeHistoryResponse
			if resp, err = s.remoteHistory(p, 0, 0, 0); err == nil {
				c = resp.CompactedRevision
			}
		}
		if err != nil {
			return 0, err
		}
		compacted = max(compacted, c)
	}
	return compacted, nil
}

// RangeHistory serves Internal.RangeHistory from this node's replica.
func (i *internalService) RangeHistory(ctx context.Context, req *tesserapb.RangeHistoryRequest) (*tesserapb.RangeHistoryResponse, error) {
	s := i.s
	rng := s.rangeByID(req.RangeId)
	if rng == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: range %d is not on this node", req.RangeId)
	}
	start, end, ok := rng.Bounds()
	if !ok || !keyIn(req.Key, start, end) {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: range %d does not hold %q here", req.RangeId, req.Key)
	}
	compacted, err := s.store.CompactedRevision(req.Key, req.RangeEnd)
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	resp := &tesserapb.RangeHistoryResponse{CompactedRevision: compacted}
	if req.MaxEvents <= 0 || compacted >= req.FromRevision {
		return resp, nil
	}
	// The asker routes the keys as it knows the ranges, which may be before
	// a split here: the interval may reach into ranges other than this one.
	// Each is read once its replica holds every write at or below
	// to_revision (see history).
	events, covered, err := s.history(req.Key, req.RangeEnd, req.FromRevision, req.ToRevision, int(req.MaxEvents))
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	resp.CoveredTo = covered
	if resp.Events, err = encodeEvents(events); err != nil {
		return nil, err
	}
	return resp, nil
}
