package watchhub

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/wirecodec"
	"github.com/tesserakv/tessera/statemachine"
)

// fakeNode stands in for a node: two ranges split at "m", an oracle, and a
// history of every event published. Closing a range publishes a barrier's
// floor, as a range applying one would.
type fakeNode struct {
	hub *Hub

	mu        sync.Mutex
	rev       int64 // the oracle's last revision
	history   []*mvccpb.Event
	compacted int64
	closes    map[uint64]int
	// pending: the revisions put took whose events apply has not published
	// yet, with their ranges.
	pending map[int64]uint64
	// closeGates holds CloseRange calls for a range, after they took their
	// revision, until the channel is closed.
	closeGates map[uint64]chan struct{}
	// leaderless: the node knows no oracle leader.
	leaderless bool
}

func newFakeNode(t *testing.T) (*fakeNode, pb.WatchClient) {
	return newFakeNodeNotifying(t, time.Hour)
}

// newFakeNodeNotifying is newFakeNode with a progress notification interval.
func newFakeNodeNotifying(t *testing.T, progressEvery time.Duration) (*fakeNode, pb.WatchClient) {
	n := &fakeNode{rev: 1, closes: map[uint64]int{}, pending: map[int64]uint64{}}
	n.hub = New(n, Config{ProgressNotifyInterval: progressEvery})
	n.hub.Publish(statemachine.Applied{RangeID: 1, Floor: 1, Reset: true})
	n.hub.Publish(statemachine.Applied{RangeID: 2, Floor: 1, Reset: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(wirecodec.Codec{}))
	pb.RegisterWatchServer(srv, n.hub)
	go func() { _ = srv.Serve(ln) }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		n.hub.Stop()
		srv.Stop()
	})
	return n, pb.NewWatchClient(cc)
}

func rangeOf(key []byte) uint64 {
	if bytes.Compare(key, []byte("m")) < 0 {
		return 1
	}
	return 2
}

func (n *fakeNode) next() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rev++
	return n.rev
}

// put takes a revision and returns a PUT event of key at it, not published.
func (n *fakeNode) put(key, value string) *mvccpb.Event {
	rev := n.next()
	n.mu.Lock()
	n.pending[rev] = rangeOf([]byte(key))
	n.mu.Unlock()
	return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), ModRevision: rev, CreateRevision: rev, Version: 1}}
}

// apply publishes events as their range would, with the range's floor at the
// last of them, and records them in the history.
func (n *fakeNode) apply(events ...*mvccpb.Event) {
	n.mu.Lock()
	n.history = append(n.history, events...)
	for _, ev := range events {
		delete(n.pending, ev.Kv.ModRevision)
	}
	n.mu.Unlock()
	last := events[len(events)-1]
	n.hub.Publish(statemachine.Applied{RangeID: rangeOf(last.Kv.Key), Events: events, Floor: last.Kv.ModRevision})
}

func (n *fakeNode) History(key, rangeEnd []byte, fromRev, toRev int64, maxEvents int) ([]*mvccpb.Event, int64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if fromRev < n.compacted {
		return nil, 0, &statemachine.CompactedError{CompactRevision: n.compacted}
	}
	iv := newInterval(key, rangeEnd)
	var out []*mvccpb.Event
	for _, ev := range n.history { // history is in revision order
		rev := ev.Kv.ModRevision
		if rev < fromRev || rev > toRev || !iv.contains(ev.Kv.Key) {
			continue
		}
		if len(out) >= maxEvents && out[len(out)-1].Kv.ModRevision != rev {
			return out, out[len(out)-1].Kv.ModRevision, nil
		}
		out = append(out, ev)
	}
	return out, toRev, nil
}

func (n *fakeNode) Follow(uint64) {}

func (n *fakeNode) CompactedRevision([]byte, []byte) (int64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.compacted, nil
}

func (n *fakeNode) RangesOf(key, rangeEnd []byte) ([]uint64, bool) {
	iv := newInterval(key, rangeEnd)
	switch {
	case iv.single:
		return []uint64{rangeOf(key)}, true
	case rangeOf(key) == 2:
		return []uint64{2}, true
	case iv.end != "\x00" && iv.end <= "m":
		return []uint64{1}, true
	}
	return []uint64{1, 2}, true
}

// CloseRange closes even ranges by a barrier (a floor published later),
// odd ones as a leader's fenced read does (the closed revision returned).
// Either waits, as the range would, until the range's writes at revisions
// below the closing's have applied.
func (n *fakeNode) CloseRange(ctx context.Context, rangeID uint64) (int64, error) {
	rev := n.next()
	n.mu.Lock()
	n.closes[rangeID]++
	gate := n.closeGates[rangeID]
	for n.pendingBelow(rangeID, rev) {
		n.mu.Unlock()
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		n.mu.Lock()
	}
	n.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if rangeID%2 == 1 {
		return rev, nil
	}
	n.hub.Publish(statemachine.Applied{RangeID: rangeID, Floor: rev})
	return 0, nil
}

// pendingBelow reports whether a write of range id below rev has not
// applied yet. n.mu must be held.
func (n *fakeNode) pendingBelow(id uint64, rev int64) bool {
	for r, rid := range n.pending {
		if rid == id && r < rev {
			return true
		}
	}
	return false
}

func (n *fakeNode) CurrentRevision(context.Context) (int64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rev, nil
}

func (n *fakeNode) Header(rev int64) *pb.ResponseHeader { return &pb.ResponseHeader{Revision: rev} }

func (n *fakeNode) HasLeader() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.leaderless
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// watchFrom opens a stream with one watch and returns it after the created
// answer.
func watchFrom(t *testing.T, ctx context.Context, wc pb.WatchClient, create *pb.WatchCreateRequest) pb.Watch_WatchClient {
	t.Helper()
	st, err := wc.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: create}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil || !resp.Created || resp.Canceled {
		t.Fatalf("create: %v %v", resp, err)
	}
	return st
}

// recvEvents reads responses until it has n events.
func recvEvents(t *testing.T, st pb.Watch_WatchClient, n int) []*mvccpb.Event {
	t.Helper()
	var out []*mvccpb.Event
	for len(out) < n {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(out), n, err)
		}
		out = append(out, resp.Events...)
	}
	return out
}

func requireRevisions(t *testing.T, got []*mvccpb.Event, want []*mvccpb.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Kv.ModRevision != want[i].Kv.ModRevision || !bytes.Equal(got[i].Kv.Key, want[i].Kv.Key) {
			t.Fatalf("event %d: %s@%d, want %s@%d", i, got[i].Kv.Key, got[i].Kv.ModRevision, want[i].Kv.Key, want[i].Kv.ModRevision)
		}
	}
}

// TestMergeWaitsForEveryRange: an event of one range is held until the
// other range covered by the watch has closed past it (the hub closes it),
// and events published out of revision order by two ranges arrive in order.
func TestMergeWaitsForEveryRange(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte{0}})
	z := n.put("z", "1") // range 2; range 1 is idle at floor 1
	n.apply(z)
	requireRevisions(t, recvEvents(t, st, 1), []*mvccpb.Event{z})
	n.mu.Lock()
	closes := n.closes[1]
	n.mu.Unlock()
	if closes == 0 {
		t.Fatal("the idle range was never closed")
	}
	// Two ranges take revisions in one order and publish in the other.
	b, y := n.put("b", "2"), n.put("y", "3")
	n.apply(y)
	n.apply(b)
	requireRevisions(t, recvEvents(t, st, 2), []*mvccpb.Event{b, y})
}

// TestSlowStreamCatchesUp: a stream that does not read while many events
// pass falls out of the live buffer and catches up from history: it gets
// every event once, in order, as does a stream that kept reading.
func TestSlowStreamCatchesUp(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	slow := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	fast := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	const total = 3 * streamQueueEvents
	value := string(bytes.Repeat([]byte("v"), 1024))
	var want []*mvccpb.Event
	got := make(chan []*mvccpb.Event, 1)
	go func() { got <- recvEvents(t, fast, total) }()
	for i := range total {
		ev := n.put(fmt.Sprintf("k%05d", i), value)
		want = append(want, ev)
		n.apply(ev)
	}
	requireRevisions(t, <-got, want)
	requireRevisions(t, recvEvents(t, slow, total), want)
}

// TestCompactedStart: a watch starting below the compacted revision is
// created, then cancelled with the compacted revision, as etcd does.
func TestCompactedStart(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	for range 3 {
		n.apply(n.put("a", "x"))
	}
	n.mu.Lock()
	n.compacted = 3
	n.mu.Unlock()
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 2})
	resp, err := st.Recv()
	if err != nil || !resp.Canceled || resp.CompactRevision != 3 {
		t.Fatalf("got %v %v, want a cancel with compact_revision 3", resp, err)
	}
}

// TestRequestProgress: RequestProgress on a stream watching an idle range
// answers once the range has closed past the revision current at the
// request, with watch ID -1.
func TestRequestProgress(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a")})
	n.apply(n.put("z", "1")) // moves the oracle; range 1 stays idle
	current, _ := n.CurrentRevision(ctx)
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil || resp.WatchId != -1 || len(resp.Events) != 0 || resp.Header.Revision < current {
		t.Fatalf("got %v %v, want a progress notification at >= %d", resp, err, current)
	}
}

// TestProgressNotifyWhenIdle: a watch with progress_notify that has been
// sent everything, on ranges where nothing happens (rounds that release
// nothing skip such watchers), still gets its periodic progress
// notification, and it is not below the event it was sent.
func TestProgressNotifyWhenIdle(t *testing.T) {
	n, wc := newFakeNodeNotifying(t, 20*time.Millisecond)
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("b"), ProgressNotify: true})
	ev := n.put("a", "1")
	n.apply(ev)
	requireRevisions(t, recvEvents(t, st, 1), []*mvccpb.Event{ev})
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("no progress notification: %v", err)
		}
		if len(resp.Events) == 0 {
			if resp.Header.Revision < ev.Kv.ModRevision {
				t.Fatalf("progress notification at %d, below the event sent at %d", resp.Header.Revision, ev.Kv.ModRevision)
			}
			return
		}
	}
}

// TestCreateRefusals: a duplicate client-chosen ID and an empty interval are
// refused as etcd refuses them; cancel answers with the watch's ID.
func TestCreateRefusals(t *testing.T) {
	_, wc := newFakeNode(t)
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7})
	for _, c := range []struct {
		req  *pb.WatchCreateRequest
		want string
	}{
		{&pb.WatchCreateRequest{Key: []byte("b"), WatchId: 7}, errDuplicateWatchID.Error()},
		{&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")}, errEmptyWatchRange.Error()},
	} {
		if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: c.req}}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil || !resp.Created || !resp.Canceled || resp.WatchId != -1 || resp.CancelReason != c.want {
			t.Fatalf("create %v: got %v %v, want refusal %q", c.req, resp, err, c.want)
		}
	}
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := st.Recv(); err != nil || !resp.Canceled || resp.WatchId != 7 {
		t.Fatalf("cancel: %v %v", resp, err)
	}
}

// TestBufferBounded: with a range idle (its floor holding the buffer back)
// and nobody watching, the buffer keeps at most maxBufferedBytes; a watch
// that starts afterwards from the first revision still gets every event,
// the dropped ones from history.
func TestBufferBounded(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	big := string(bytes.Repeat([]byte("v"), 1<<20))
	const total = 100 // about 100 MiB by statemachine.EventBytes
	var want []*mvccpb.Event
	for i := range total {
		ev := n.put(fmt.Sprintf("z%03d", i), big) // range 2; range 1 stays at floor 1
		want = append(want, ev)
		n.apply(ev)
	}
	n.hub.round()
	n.hub.mu.Lock()
	buffered, bytesHeld := len(n.hub.buf), n.hub.bufBytes
	n.hub.mu.Unlock()
	if bytesHeld > maxBufferedBytes || buffered >= total {
		t.Fatalf("%d events (%d bytes) buffered after %d published, bound %d bytes", buffered, bytesHeld, total, maxBufferedBytes)
	}
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("z"), RangeEnd: []byte("z\xff"), StartRevision: 2})
	requireRevisions(t, recvEvents(t, st, total), want)
}

// TestRequireLeader: a watch stream that requires a leader (etcdctl's do) is
// refused with etcd's "no leader" while the node knows none, and served
// once it does.
func TestRequireLeader(t *testing.T) {
	n, wc := newFakeNode(t)
	n.mu.Lock()
	n.leaderless = true
	n.mu.Unlock()
	ctx := metadata.AppendToOutgoingContext(ctxT(t), rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)
	st, err := wc.Watch(ctx)
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != rpctypes.ErrorDesc(rpctypes.ErrGRPCNoLeader) {
		t.Fatalf("got %v, want etcd's no leader", err)
	}
	n.mu.Lock()
	n.leaderless = false
	n.mu.Unlock()
	watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a")})
}

// TestBufferBoundedWithoutWatchers: with nobody watching, the buffer keeps
// at most idleBufferedBytes of a busy range's events, however long an idle
// range's floor holds back, without waking the idle range; a watcher that
// starts afterwards from the first of those events still gets them all,
// from history.
func TestBufferBoundedWithoutWatchers(t *testing.T) {
	n, wc := newFakeNode(t)
	value := strings.Repeat("v", 1<<20)
	const puts = 2 * idleBufferedBytes >> 20
	n.mu.Lock()
	first := n.rev + 1
	n.mu.Unlock()
	for i := range puts {
		n.apply(n.put(fmt.Sprintf("z%03d", i), value))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n.hub.mu.Lock()
		buffered := n.hub.bufBytes
		n.hub.mu.Unlock()
		if buffered <= idleBufferedBytes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still buffered with nobody watching, want at most %d", buffered, idleBufferedBytes)
		}
		n.hub.poke()
		time.Sleep(10 * time.Millisecond)
	}
	n.mu.Lock()
	closes := n.closes[1]
	n.mu.Unlock()
	if closes != 0 {
		t.Fatalf("idle range 1 closed %d times with nobody watching", closes)
	}
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("z"), RangeEnd: []byte("z\xff"), StartRevision: first})
	events := recvEvents(t, st, puts)
	for i, ev := range events {
		if want := fmt.Sprintf("z%03d", i); string(ev.Kv.Key) != want || ev.Kv.ModRevision != first+int64(i) {
			t.Fatalf("event %d: %s at %d, want %s at %d", i, ev.Kv.Key, ev.Kv.ModRevision, want, first+int64(i))
		}
	}
}

// TestRequestProgressNotBelowEvents: a stream's progress notification (which
// clientv3 hands to every watch of the stream) is never below an event one
// of its watches was sent, even when that event came after the request while
// another watch of the stream still waited for its range to close; and it
// is sent.
func TestRequestProgressNotBelowEvents(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	st, err := wc.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"z", "a"} { // range 2, then range 1
		if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(key)}}}); err != nil {
			t.Fatal(err)
		}
		if resp, err := st.Recv(); err != nil || !resp.Created {
			t.Fatalf("create: %v %v", resp, err)
		}
	}
	first := n.put("z", "1")
	n.apply(first)
	requireRevisions(t, recvEvents(t, st, 1), []*mvccpb.Event{first})

	gate := make(chan struct{})
	n.mu.Lock()
	n.closeGates = map[uint64]chan struct{}{1: gate}
	n.mu.Unlock()
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	// The watch of "a" waits for range 1 to close; its closing has taken
	// its revision when the watch of "z" is sent a later event.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		n.mu.Lock()
		closing := n.closes[1] > 0
		n.mu.Unlock()
		if closing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("range 1 was never closed for the progress request")
		}
	}
	second := n.put("z", "2")
	n.apply(second)
	close(gate)
	// The event and the notification come in either order; the
	// notification is not below any event sent before it.
	var lastEvent int64
	gotEvent, gotProgress := false, false
	for !gotEvent || !gotProgress {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("event %v, progress %v: %v", gotEvent, gotProgress, err)
		}
		for _, ev := range resp.Events {
			lastEvent = ev.Kv.ModRevision
			gotEvent = gotEvent || ev.Kv.ModRevision == second.Kv.ModRevision
		}
		if resp.WatchId == -1 && len(resp.Events) == 0 {
			if resp.Header.Revision < lastEvent {
				t.Fatalf("progress notification at %d after the stream was sent an event at %d", resp.Header.Revision, lastEvent)
			}
			gotProgress = true
		}
	}
}

// TestOnePublishPerEvent: a write that reaches the hub twice — from a
// range's feed and from its new local replica, under the same range ID or
// another (a split while it moved) — is delivered once.
func TestOnePublishPerEvent(t *testing.T) {
	n, wc := newFakeNode(t)
	ctx := ctxT(t)
	st := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("c")})
	a, b := n.put("a", "1"), n.put("b", "2")
	n.apply(a, b)
	// The same events again: from the range itself, and under another ID.
	n.hub.Publish(statemachine.Applied{RangeID: 1, Events: []*mvccpb.Event{a, b}, Floor: b.Kv.ModRevision})
	n.hub.Publish(statemachine.Applied{RangeID: 7, Events: []*mvccpb.Event{b}, Floor: b.Kv.ModRevision})
	c := n.put("a", "3")
	n.apply(c)
	requireRevisions(t, recvEvents(t, st, 3), []*mvccpb.Event{a, b, c})
}

// TestStats: the hub counts its streams and their watches; while range 1
// cannot close, range 2's writes hold back the watch spanning both, and
// both lags show it until range 1 closes again.
func TestStats(t *testing.T) {
	n, wc := newFakeNode(t)
	gate := make(chan struct{})
	n.mu.Lock()
	n.closeGates = map[uint64]chan struct{}{1: gate}
	n.mu.Unlock()
	ctx := ctxT(t)
	a := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte{0}})
	b := watchFrom(t, ctx, wc, &pb.WatchCreateRequest{Key: []byte("z")})
	if err := b.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("b")}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := b.Recv(); err != nil || !resp.Created {
		t.Fatalf("second watch: %v %v", resp, err)
	}
	var want []*mvccpb.Event
	for i := range 5 {
		ev := n.put("z", fmt.Sprint(i))
		n.apply(ev)
		want = append(want, ev)
	}
	requireRevisions(t, recvEvents(t, b, 5), want)
	st := n.hub.Stats()
	if st.Streams != 2 || st.Watchers != 3 || st.Unsynced != 0 {
		t.Fatalf("Stats = %+v, want 2 streams, 3 watchers, all live", st)
	}
	if st.ClosedLag < 5 || st.WatcherLag < 5 {
		t.Fatalf("Stats = %+v with range 1 unable to close: want both lags at least 5", st)
	}
	close(gate)
	requireRevisions(t, recvEvents(t, a, 5), want)
	deadline := time.Now().Add(10 * time.Second)
	for st := n.hub.Stats(); st.ClosedLag >= 5 || st.WatcherLag >= 5; st = n.hub.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("Stats = %+v: lags stay after range 1 closed", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
