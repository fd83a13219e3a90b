package router

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// heldPeer answers each forwarded write when the test releases its range ID,
// with the range ID as the result's generation, and records whether the
// request carried a deadline.
type heldPeer struct {
	tesserapb.UnimplementedInternalServer
	stopc chan struct{}

	mu       sync.Mutex
	release  map[uint64]chan struct{}
	arrived  chan uint64
	deadline map[uint64]bool
}

func newHeldPeer() *heldPeer {
	return &heldPeer{stopc: make(chan struct{}), release: map[uint64]chan struct{}{}, arrived: make(chan uint64, 100), deadline: map[uint64]bool{}}
}

func (p *heldPeer) gate(id uint64) chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.release[id] == nil {
		p.release[id] = make(chan struct{})
	}
	return p.release[id]
}

func (p *heldPeer) write(ctx context.Context, req *tesserapb.RangeWriteRequest) (*tesserapb.RangeWriteResponse, error) {
	_, hasDeadline := ctx.Deadline()
	p.mu.Lock()
	p.deadline[req.RangeId] = hasDeadline
	p.mu.Unlock()
	p.arrived <- req.RangeId
	select {
	case <-p.gate(req.RangeId):
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if req.RangeId%2 == 1 {
		return nil, status.Errorf(codes.FailedPrecondition, "range %d refused", req.RangeId)
	}
	return &tesserapb.RangeWriteResponse{Result: &tesserapb.Result{Generation: req.RangeId}}, nil
}

func (p *heldPeer) RangeWriteStream(s tesserapb.Internal_RangeWriteStreamServer) error {
	return serveRangeWrites(s, p.stopc, p.write)
}

// heldSetup serves a new heldPeer and returns it, its server, a connection
// to it and a writeStreams to send with.
func heldSetup(t *testing.T) (*heldPeer, *grpc.Server, *grpc.ClientConn, *writeStreams, context.Context) {
	p := newHeldPeer()
	srv, cc := serveInternal(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	stopper := stop.New()
	t.Cleanup(stopper.Stop)
	return p, srv, cc, &writeStreams{log: slog.New(slog.DiscardHandler), stopper: stopper}, ctx
}

type callResult struct {
	resp *tesserapb.RangeWriteResponse
	err  error
}

func callAsync(w *writeStreams, ctx context.Context, cc *grpc.ClientConn, rangeID uint64) chan callResult {
	out := make(chan callResult, 1)
	go func() {
		resp, err := w.call(ctx, cc, &tesserapb.RangeWriteRequest{RangeId: rangeID})
		out <- callResult{resp, err}
	}()
	return out
}

func waitResult(t *testing.T, ch chan callResult) callResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
		return callResult{}
	}
}

// TestWriteStreamAnswers: writes sent together over one stream and
// answered in the reverse order each get their own answer, a refusal with
// its status; the caller's deadline reaches the serving side.
func TestWriteStreamAnswers(t *testing.T) {
	p, _, cc, w, ctx := heldSetup(t)
	const n = 16
	results := map[uint64]chan callResult{}
	for id := uint64(1); id <= n; id++ {
		results[id] = callAsync(w, ctx, cc, id)
	}
	for range n {
		<-p.arrived
	}
	for id := uint64(n); id >= 1; id-- {
		close(p.gate(id))
		r := waitResult(t, results[id])
		if id%2 == 1 {
			if status.Code(r.err) != codes.FailedPrecondition || status.Convert(r.err).Message() != "range "+strconv.FormatUint(id, 10)+" refused" {
				t.Fatalf("range %d: got %v, want its refusal", id, r.err)
			}
			continue
		}
		if r.err != nil || r.resp.GetResult().GetGeneration() != id {
			t.Fatalf("range %d: got %v, %v; want its own answer", id, r.resp, r.err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := uint64(1); id <= n; id++ {
		if !p.deadline[id] {
			t.Fatalf("range %d: the caller's deadline did not reach the serving side", id)
		}
	}
	if len(w.streams) != 1 {
		t.Fatalf("%d streams open to one node, want 1", len(w.streams))
	}
}

// TestWriteStreamBroken: a write waiting on a stream whose node goes away
// fails Unavailable and is not taken for never sent (it may have been
// applied); a write to the node while it is down is never sent, so the
// router may ask again.
func TestWriteStreamBroken(t *testing.T) {
	p, srv, cc, w, ctx := heldSetup(t)
	waiting := callAsync(w, ctx, cc, 2)
	<-p.arrived
	srv.Stop()
	r := waitResult(t, waiting)
	if status.Code(r.err) != codes.Unavailable || neverSent(r.err) {
		t.Fatalf("write sent before the node stopped: got %v, want Unavailable not taken for never sent", r.err)
	}
	_, err := w.call(ctx, cc, &tesserapb.RangeWriteRequest{RangeId: 4})
	if !neverSent(err) {
		t.Fatalf("write to a stopped node: got %v, want never sent", err)
	}
}

// TestWriteStreamStop: stopping the serving side answers the writes in
// flight before the stream ends, and lets a graceful stop of its gRPC server
// finish although the sender keeps its stream open.
func TestWriteStreamStop(t *testing.T) {
	p, srv, cc, w, ctx := heldSetup(t)
	inFlight := callAsync(w, ctx, cc, 2)
	<-p.arrived
	close(p.stopc)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	close(p.gate(2))
	if r := waitResult(t, inFlight); r.err != nil || r.resp.GetResult().GetGeneration() != 2 {
		t.Fatalf("write in flight at the stop: got %v, %v; want its answer", r.resp, r.err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("graceful stop waits for the sender's stream")
	}
}

// TestWriteStreamSlowNode: while the stream to a node that accepts
// connections but never answers is being opened, a write to it ends with
// its own deadline, and writes to another node go through meanwhile.
func TestWriteStreamSlowNode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = conn.Close() }) // held open, never answered
		}
	}()
	silent, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Close() })

	p, _, cc, w, ctx := heldSetup(t)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	stuck := callAsync(w, short, silent, 2)
	healthy := callAsync(w, ctx, cc, 4)
	<-p.arrived
	close(p.gate(4))
	if r := waitResult(t, healthy); r.err != nil || r.resp.GetResult().GetGeneration() != 4 {
		t.Fatalf("write to the healthy node: got %v, %v", r.resp, r.err)
	}
	if r := waitResult(t, stuck); status.Code(r.err) != codes.DeadlineExceeded {
		t.Fatalf("write to the silent node: got %v, want its deadline", r.err)
	}
}
