package router

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// writeStreams sends the writes this node forwards to other nodes, one
// Internal.RangeWriteStream per connection: a forwarded write is then one
// message each way on a stream that is already open, instead of a call of
// its own (stream set-up, headers, a handler goroutine on the leader's node).
type writeStreams struct {
	log     *slog.Logger
	stopper *stop.Stopper // the router's

	mu      sync.Mutex
	streams map[*grpc.ClientConn]*streamSlot // guarded by mu
}

// streamSlot is the stream to one node: being opened until ready closes,
// then ws or err.
type streamSlot struct {
	ready chan struct{}
	ws    *writeStream // set before ready closes
	err   error        // set before ready closes
}

// writeStream is one open RangeWriteStream and the writes awaiting answers.
type writeStream struct {
	owner  *writeStreams
	slot   *streamSlot
	cc     *grpc.ClientConn
	cancel context.CancelFunc

	stream tesserapb.Internal_RangeWriteStreamClient
	sendMu sync.Mutex // serializes Send

	mu      sync.Mutex // guards the fields below
	seq     uint64
	pending map[uint64]chan *tesserapb.RangeWriteStreamResponse
	err     error // set once the stream broke; no more sends
}

// errNodeStopping refuses a forwarded write once the router is stopping.
var errNodeStopping = status.Error(codes.Unavailable, "tessera: node stopping")

// call sends req to the node of cc and waits for its answer. It fails with
// the status the leader's node answered (with its NotLeader detail), a
// notSentError when the stream could not be opened (the write was never
// sent), or Unavailable when the stream broke with the write sent (it may
// have been applied).
func (w *writeStreams) call(ctx context.Context, cc *grpc.ClientConn, req *tesserapb.RangeWriteRequest) (*tesserapb.RangeWriteResponse, error) {
	ws, err := w.open(ctx, cc)
	if err != nil {
		return nil, err
	}
	ch := make(chan *tesserapb.RangeWriteStreamResponse, 1)
	msg := &tesserapb.RangeWriteStreamRequest{Request: req}
	if deadline, ok := ctx.Deadline(); ok {
		msg.TimeoutMs = max(time.Until(deadline).Milliseconds(), 1)
	}
	ws.mu.Lock()
	if ws.err != nil {
		// The stream broke before this write was sent on it.
		ws.mu.Unlock()
		return nil, &notSentError{st: status.Convert(ws.err)}
	}
	ws.seq++
	msg.Seq = ws.seq
	ws.pending[msg.Seq] = ch
	ws.mu.Unlock()
	ws.sendMu.Lock()
	serr := ws.stream.Send(msg)
	ws.sendMu.Unlock()
	if serr != nil {
		// The receiving goroutine sees the stream end too and answers every
		// pending write, this one included, with the stream's status.
		ws.cancel()
	}
	select {
	case resp := <-ch:
		if resp.Code != uint32(codes.OK) {
			return nil, withNotLeader(status.New(codes.Code(resp.Code), resp.Message), resp.NotLeader).Err()
		}
		return resp.Response, nil
	case <-ctx.Done():
		ws.mu.Lock()
		delete(ws.pending, msg.Seq)
		ws.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// open returns the stream to cc's node, opening one when there is none or
// the last one broke. The opening runs apart from the caller, which waits
// for it only as long as ctx lets it; writes to other nodes do not wait.
func (w *writeStreams) open(ctx context.Context, cc *grpc.ClientConn) (*writeStream, error) {
	for {
		w.mu.Lock()
		slot := w.streams[cc]
		if slot == nil {
			slot = &streamSlot{ready: make(chan struct{})}
			if w.streams == nil {
				w.streams = map[*grpc.ClientConn]*streamSlot{}
			}
			w.streams[cc] = slot
			if err := w.stopper.RunAsync(func() { w.dial(cc, slot) }); err != nil {
				delete(w.streams, cc)
				w.mu.Unlock()
				return nil, errNodeStopping
			}
		}
		w.mu.Unlock()
		select {
		case <-slot.ready:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		if slot.err != nil {
			return nil, slot.err
		}
		if !slot.ws.broken() {
			return slot.ws, nil
		}
		// It broke since; its receiver is removing the slot (or has).
		w.forget(cc, slot)
	}
}

// dial opens the stream of slot, or records why it could not; a slot that
// failed is forgotten, so the next write tries again.
func (w *writeStreams) dial(cc *grpc.ClientConn, slot *streamSlot) {
	defer close(slot.ready)
	ctx, cancel := w.stopper.WithCancelOnQuiesce(forwardedContext(context.Background()))
	stream, err := tesserapb.NewInternalClient(cc).RangeWriteStream(ctx)
	if err != nil {
		cancel()
		slot.err = err
		if st := status.Convert(err); st.Code() == codes.Unavailable {
			slot.err = &notSentError{st: st}
		}
		w.forget(cc, slot)
		return
	}
	ws := &writeStream{owner: w, slot: slot, cc: cc, cancel: cancel, stream: stream, pending: map[uint64]chan *tesserapb.RangeWriteStreamResponse{}}
	if err := w.stopper.RunAsync(ws.receive); err != nil {
		cancel()
		slot.err = errNodeStopping
		w.forget(cc, slot)
		return
	}
	slot.ws = ws
}

// forget drops slot from the streams if it is still cc's.
func (w *writeStreams) forget(cc *grpc.ClientConn, slot *streamSlot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streams[cc] == slot {
		delete(w.streams, cc)
	}
}

func (ws *writeStream) broken() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.err != nil
}

// receive hands each answer to its waiting write until the stream ends,
// then fails the writes still waiting.
func (ws *writeStream) receive() {
	for {
		resp, err := ws.stream.Recv()
		if err != nil {
			ws.broke(err)
			return
		}
		ws.mu.Lock()
		ch := ws.pending[resp.Seq]
		delete(ws.pending, resp.Seq)
		ws.mu.Unlock()
		if ch != nil {
			ch <- resp
		}
	}
}

// broke ends the stream: later writes open a new one, and those still
// waiting get Unavailable, as a unary call on a broken connection would
// (not "while dialing": they were sent, and may have been applied).
func (ws *writeStream) broke(err error) {
	ws.cancel()
	ws.owner.log.Debug("forwarding stream ended", "target", ws.cc.Target(), "err", err)
	st := status.New(codes.Unavailable, "tessera: the stream forwarding writes to the range leader's node ended")
	ws.mu.Lock()
	ws.err = st.Err()
	pending := ws.pending
	ws.pending = nil
	ws.mu.Unlock()
	for seq, ch := range pending {
		ch <- &tesserapb.RangeWriteStreamResponse{Seq: seq, Code: uint32(st.Code()), Message: st.Message()}
	}
	ws.owner.forget(ws.cc, ws.slot)
}

// RangeWriteStream serves Internal.RangeWriteStream with rangeWrite. When
// the router stops, the stream ends (Unavailable) once the writes it carries
// are answered, so that a graceful stop of the server does not wait for the
// sending node to hang up.
func (r *Router) RangeWriteStream(stream tesserapb.Internal_RangeWriteStreamServer) error {
	return serveRangeWrites(stream, r.stopper.ShouldQuiesce(), r.rangeWrite)
}

// serveRangeWrites serves each request of a RangeWriteStream with write as
// it arrives, in a goroutine of its own, and sends each answer when ready,
// until the sender ends the stream or stopc closes.
func serveRangeWrites(stream tesserapb.Internal_RangeWriteStreamServer, stopc <-chan struct{}, write func(context.Context, *tesserapb.RangeWriteRequest) (*tesserapb.RangeWriteResponse, error)) error {
	var (
		sendMu sync.Mutex
		mu     sync.Mutex // guards closed and wg.Add
		closed bool
		wg     sync.WaitGroup
	)
	serve := func(msg *tesserapb.RangeWriteStreamRequest) {
		defer wg.Done()
		ctx := stream.Context()
		if msg.TimeoutMs > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(msg.TimeoutMs)*time.Millisecond)
			defer cancel()
		}
		out := &tesserapb.RangeWriteStreamResponse{Seq: msg.Seq}
		resp, err := write(ctx, msg.GetRequest())
		if err != nil {
			st := status.Convert(err)
			out.Code, out.Message, out.NotLeader = uint32(st.Code()), st.Message(), notLeaderOf(st)
		} else {
			out.Response = resp
		}
		sendMu.Lock()
		defer sendMu.Unlock()
		_ = stream.Send(out) // fails only when the stream is gone, and the sender with it
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				return
			}
			wg.Add(1)
			mu.Unlock()
			go serve(msg)
		}
	}()
	var err error
	select {
	case <-ended:
	case <-stopc:
		err = status.Error(codes.Unavailable, "tessera: node stopping")
	}
	mu.Lock()
	closed = true
	mu.Unlock()
	wg.Wait() // no Send after the handler returns
	return err
}
