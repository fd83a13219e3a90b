package watchhub

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// interval is a watch's keys in etcd's form: end nil for the single key,
// "\x00" for every key from key on, otherwise [key, end). Comparable, so it
// keys the live groups.
type interval struct {
	key, end string
	single   bool
}

func newInterval(key, rangeEnd []byte) interval {
	return interval{key: string(key), end: string(rangeEnd), single: len(rangeEnd) == 0}
}

func (iv interval) keyBytes() []byte { return []byte(iv.key) }

// endBytes returns the interval's end in etcd's form (nil: single key).
func (iv interval) endBytes() []byte {
	if iv.single {
		return nil
	}
	return []byte(iv.end)
}

func (iv interval) contains(k []byte) bool {
	if iv.single {
		return string(k) == iv.key
	}
	if bytes.Compare(k, []byte(iv.key)) < 0 {
		return false
	}
	return iv.end == "\x00" || bytes.Compare(k, []byte(iv.end)) < 0
}

// watcher is one watch of a stream. Its fields after the options are
// guarded by the hub's mu.
type watcher struct {
	id             int64
	idField        mem.Buffer // id's watch_id field, encoded (see watchIDField)
	s              *stream
	iv             interval
	noPut          bool
	noDelete       bool
	prevKV         bool
	fragment       bool
	progressNotify bool

	// sentRev: every event of the watch at or below it has been queued.
	sentRev int64
	// live: in the hub's groups, fed from the buffer; otherwise the
	// stream's catch-up feeds it from history.
	live bool
	// removed: cancelled; nothing more is sent.
	removed bool
	// checkCompacted: the start is still to be checked against compaction.
	checkCompacted bool
	// sentSinceTick: events were queued since the last progress tick.
	sentSinceTick bool
	// progressTarget, when positive: a progress notification is due once
	// sentRev reaches it.
	progressTarget int64
	// progressRev is the highest progress revision the watch was told, by
	// its own notifications or by its stream's (clientv3 hands those to
	// every watch of the stream): a later one must not be lower.
	progressRev int64
	// eventRev is the revision of the last event queued for the watch (at
	// most sentRev): its stream's progress notifications, which clientv3
	// hands to every watch of the stream, must not be lower.
	eventRev int64
}

// view returns the events as this watch sends them: filtered, and without
// previous key-values unless it asked for them.
func (w *watcher) view(events []*mvccpb.Event) []*mvccpb.Event {
	out := make([]*mvccpb.Event, 0, len(events))
	for _, ev := range events {
		if (ev.Type == mvccpb.PUT && w.noPut) || (ev.Type == mvccpb.DELETE && w.noDelete) {
			continue
		}
		if !w.prevKV && ev.PrevKv != nil {
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		out = append(out, ev)
	}
	return out
}

// deliver queues events (whole revisions, all at or below rev) on the
// watch's stream when they fit (see offerAll) and reports whether they
// did; filtered-out events need no room. shared holds the deliveries already
// made of the same events (the live watchers of a group that were at the
// same revision): a watch with the same options takes their encoded
// responses instead of encoding the events again.
func (w *watcher) deliver(events []*mvccpb.Event, rev int64, shared map[deliveryShape][]encodedResponse) bool {
	shape := deliveryShape{sentRev: w.sentRev, rev: rev, noPut: w.noPut, noDelete: w.noDelete, prevKV: w.prevKV, fragment: w.fragment}
	encoded, found := shared[shape]
	if !found {
		encoded = w.encode(events, rev)
		shared[shape] = encoded
	}
	if len(encoded) == 0 {
		return true
	}
	return w.s.offerAll(w.queued(encoded))
}

// encode encodes w's view of events (whole revisions, all at or below rev)
// as responses without the watch ID; none when w wants none of them.
func (w *watcher) encode(events []*mvccpb.Event, rev int64) []encodedResponse {
	if view := w.view(events); len(view) > 0 {
		return encodeResponses(w.responses(view, rev))
	}
	return nil
}

// queued makes encoded responses w's, for its stream's queue.
func (w *watcher) queued(encoded []encodedResponse) []queued {
	out := make([]queued, len(encoded))
	for i, e := range encoded {
		out[i] = queued{msg: e.forWatch(w.idField), events: e.events, bytes: e.rest.Len()}
	}
	return out
}

// deliveryShape is what makes two watches' responses to the same events
// equal but for the watch ID.
type deliveryShape struct {
	sentRev, rev                      int64
	noPut, noDelete, prevKV, fragment bool
}

// responses puts events (at or below rev) in responses of whole revisions
// (without the watch ID: see encodedResponse), at most maxResponseEvents
// events or about responseSplitBytes each (MaxRequestBytes when smaller)
// unless one revision alone is bigger; a revision over MaxRequestBytes is
// split into fragments when the watch asked for them (as etcd does), else
// sent whole. The last response's header is at rev, the others' at their
// last event's revision.
func (w *watcher) responses(events []*mvccpb.Event, rev int64) []*pb.WatchResponse {
	split := min(w.s.hub.cfg.MaxRequestBytes, responseSplitBytes)
	var out []*pb.WatchResponse
	start, size := 0, 0
	for i, ev := range events {
		boundary := i > 0 && ev.Kv.ModRevision != events[i-1].Kv.ModRevision
		if boundary && (i-start >= maxResponseEvents || size >= split) {
			out = w.appendChunk(out, events[start:i], events[i-1].Kv.ModRevision, size)
			start, size = i, 0
		}
		size += statemachine.EventBytes(ev)
	}
	return w.appendChunk(out, events[start:], rev, size)
}

// appendChunk appends one response of events (whole revisions) at rev, or
// its fragments.
func (w *watcher) appendChunk(out []*pb.WatchResponse, events []*mvccpb.Event, rev int64, size int) []*pb.WatchResponse {
	header := w.s.hub.src.Header(rev)
	limit := w.s.hub.cfg.MaxRequestBytes
	if !w.fragment || len(events) < 2 || size < limit {
		return append(out, &pb.WatchResponse{Header: header, Events: events})
	}
	var cur []*mvccpb.Event
	size = 0
	for _, ev := range events {
		n := proto.Size(ev)
		if len(cur) > 0 && size+n > limit {
			out = append(out, &pb.WatchResponse{Header: header, Events: cur, Fragment: true})
			cur, size = nil, 0
		}
		cur = append(cur, ev)
		size += n
	}
	return append(out, &pb.WatchResponse{Header: header, Events: cur})
}

func (w *watcher) progressResponse(rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: w.s.hub.src.Header(rev), WatchId: w.id}
}
