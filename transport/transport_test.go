package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
)

// receiver is a started transport on a free loopback port whose handlers
// pass what arrives to channels.
type receiver struct {
	t       *TCP
	batches chan pb.MessageBatch
	chunks  chan pb.Chunk
	// accept decides the answer to each chunk.
	accept func(pb.Chunk) bool
}

func startReceiver(t *testing.T) *receiver {
	return startReceiverWith(t, &Factory{})
}

func startReceiverWith(t *testing.T, f *Factory) *receiver {
	t.Helper()
	r := &receiver{batches: make(chan pb.MessageBatch, 16), chunks: make(chan pb.Chunk, 16), accept: func(pb.Chunk) bool { return true }}
	nhc := config.NodeHostConfig{RaftAddress: "127.0.0.1:0", DeploymentID: 7}
	tr := f.Create(nhc, func(b pb.MessageBatch) { r.batches <- b }, func(c pb.Chunk) bool {
		r.chunks <- c
		return r.accept(c)
	})
	if f.Transport() != tr {
		t.Fatal("Factory.Transport is not the transport it made")
	}
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	r.t = tr.(*TCP)
	t.Cleanup(func() { _ = r.t.Close() })
	return r
}

func (r *receiver) addr() string { return r.t.Addr().String() }

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing arrived within 10s")
		panic("unreachable")
	}
}

func testBatch(cmd []byte) pb.MessageBatch {
	return pb.MessageBatch{
		DeploymentId:  7,
		BinVer:        raftio.TransportBinVersion,
		SourceAddress: "127.0.0.1:1",
		Requests: []pb.Message{{
			Type: pb.Replicate, ShardID: 3, From: 1, To: 2, Term: 5, LogIndex: 9, LogTerm: 4, Commit: 8,
			Entries: []pb.Entry{{Term: 5, Index: 10, Type: pb.EncodedEntry, Cmd: cmd}},
		}},
	}
}

func TestBatchesArriveInOrderAndWhole(t *testing.T) {
	r := startReceiver(t)
	ctx := context.Background()
	c, err := r.t.GetConnection(ctx, r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Small ones, one larger than the reader's buffer, one larger than the
	// buffers kept between frames, then small ones again.
	sizes := []int{1, 100, readBuffer * 3, keepBuffer + 1000, 5, 0}
	for i, n := range sizes {
		cmd := bytes.Repeat([]byte{byte('a' + i)}, n)
		if err := c.SendMessageBatch(testBatch(cmd)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	for i, n := range sizes {
		got := recv(t, r.batches)
		want := testBatch(bytes.Repeat([]byte{byte('a' + i)}, n))
		if len(got.Requests) != 1 || len(got.Requests[0].Entries) != 1 {
			t.Fatalf("batch %d: %+v", i, got)
		}
		g, w := got.Requests[0], want.Requests[0]
		if g.Type != w.Type || g.ShardID != w.ShardID || g.To != w.To || g.Term != w.Term || g.Commit != w.Commit ||
			!bytes.Equal(g.Entries[0].Cmd, w.Entries[0].Cmd) || got.SourceAddress != want.SourceAddress || got.DeploymentId != 7 {
			t.Fatalf("batch %d: got %+v, want %+v", i, g, w)
		}
	}
}

func TestChunksAndRefusal(t *testing.T) {
	r := startReceiver(t)
	r.accept = func(c pb.Chunk) bool { return c.ChunkId < 2 }
	sc, err := r.t.GetSnapshotConnection(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	for id := uint64(0); id < 3; id++ {
		ch := pb.Chunk{ShardID: 4, ReplicaID: 2, From: 1, ChunkId: id, ChunkCount: 3, Data: bytes.Repeat([]byte{byte(id)}, 1000)}
		if err := sc.SendChunk(ch); err != nil {
			t.Fatalf("chunk %d: %v", id, err)
		}
	}
	for id := uint64(0); id < 3; id++ {
		got := recv(t, r.chunks)
		if got.ChunkId != id || got.ShardID != 4 || !bytes.Equal(got.Data, bytes.Repeat([]byte{byte(id)}, 1000)) {
			t.Fatalf("chunk %d: got %+v", id, got)
		}
	}
	// The refused chunk ends the connection: the sender's side reads EOF.
	raw := sc.(*conn).c
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after a refused chunk: read %v, want EOF", err)
	}
}

func TestGarbageDropsOnlyThatConnection(t *testing.T) {
	r := startReceiver(t)
	bad, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	// Dragonboat's own transport starts a connection with its magic number;
	// this transport must refuse it (and any other stranger).
	if _, err := bad.Write([]byte{0xAE, 0x7D, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	_ = bad.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := bad.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after garbage: read %v, want EOF", err)
	}
	// A frame whose payload does not match its checksum is refused too.
	corrupt, err := r.t.connect(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer corrupt.Close()
	frame := frameOf(t, testBatch([]byte("x")))
	frame[len(frame)-1] ^= 0xFF
	if _, err := corrupt.c.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = corrupt.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := corrupt.c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after a corrupt frame: read %v, want EOF", err)
	}
	// Others are still served.
	good, err := r.t.GetConnection(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := good.SendMessageBatch(testBatch([]byte("ok"))); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, r.batches); string(got.Requests[0].Entries[0].Cmd) != "ok" {
		t.Fatalf("got %+v", got)
	}
	select {
	case b := <-r.batches:
		t.Fatalf("a refused frame was delivered: %+v", b)
	default:
	}
}

// frameOf returns the bytes send writes for b.
func frameOf(t *testing.T, b pb.MessageBatch) []byte {
	t.Helper()
	a, z := net.Pipe()
	defer a.Close()
	defer z.Close()
	out := make(chan []byte)
	go func() {
		hdr := make([]byte, headerLen)
		_, _ = io.ReadFull(z, hdr)
		_, n, _, _ := parseHeader([headerLen]byte(hdr))
		payload := make([]byte, n)
		_, _ = io.ReadFull(z, payload)
		out <- append(hdr, payload...)
	}()
	if err := (&conn{c: a}).SendMessageBatch(b); err != nil {
		t.Fatal(err)
	}
	return <-out
}

func TestCampaignHandsTheReplicaTimeoutNow(t *testing.T) {
	r := startReceiver(t)
	r.t.Campaign(12, 3)
	got := recv(t, r.batches)
	if got.DeploymentId != 7 || got.BinVer != raftio.TransportBinVersion || len(got.Requests) != 1 {
		t.Fatalf("got %+v", got)
	}
	m := got.Requests[0]
	if m.Type != pb.TimeoutNow || m.ShardID != 12 || m.To != 3 || m.Term != 0 {
		t.Fatalf("got %+v, want a term-0 TimeoutNow to replica 3 of shard 12", m)
	}
}

func TestCloseEndsAcceptedConnections(t *testing.T) {
	r := startReceiver(t)
	c, err := r.t.connect(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMessageBatch(testBatch(nil)); err != nil {
		t.Fatal(err)
	}
	recv(t, r.batches)
	done := make(chan struct{})
	go func() { _ = r.t.Close(); close(done) }()
	recv(t, done)
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after Close: read %v, want EOF", err)
	}
	if _, err := r.t.connect(context.Background(), r.addr()); err == nil {
		t.Fatal("the transport still accepts connections after Close")
	}
}

// TestStalledFrameTimesOut: a peer that sends a header and then stops is
// dropped once the payload's deadline passes; a connection idle between
// frames is not.
func TestStalledFrameTimesOut(t *testing.T) {
	var hdr [headerLen]byte
	hdr[0], hdr[1], hdr[2] = magic0, magic1, kindBatch
	hdr[7] = 10 // a 10-byte payload that never comes
	r := io.MultiReader(bytes.NewReader(hdr[:]), stallReader{})
	var deadlines []time.Time
	tr := &TCP{}
	err := tr.readFrames(r, func(d time.Time) error {
		deadlines = append(deadlines, d)
		return nil
	})
	if err != errStalled {
		t.Fatalf("readFrames = %v, want the stalled read's error", err)
	}
	if len(deadlines) != 1 || deadlines[0].IsZero() || time.Until(deadlines[0]) > frameBaseTimeout {
		t.Fatalf("deadlines set: %v, want one for the payload, at most %v ahead", deadlines, frameBaseTimeout)
	}
}

var errStalled = errors.New("stalled: the deadline would end this read")

// stallReader stands for a connection whose peer went quiet: its read
// returns when the deadline passes.
type stallReader struct{}

func (stallReader) Read([]byte) (int, error) { return 0, errStalled }

// TestDialHookOpensEveryConnection: with Factory.Dial set, message and
// snapshot connections are opened through it, with a deadline.
func TestDialHookOpensEveryConnection(t *testing.T) {
	r := startReceiver(t)
	var dialled []string
	f := &Factory{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("Dial's context has no deadline")
		}
		dialled = append(dialled, addr)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	tr := f.Create(config.NodeHostConfig{RaftAddress: "127.0.0.1:0"}, func(pb.MessageBatch) {}, func(pb.Chunk) bool { return true })
	c, err := tr.GetConnection(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMessageBatch(testBatch([]byte("via hook"))); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, r.batches); string(got.Requests[0].Entries[0].Cmd) != "via hook" {
		t.Fatalf("got %+v", got)
	}
	sc, err := tr.GetSnapshotConnection(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	if len(dialled) != 2 || dialled[0] != r.addr() || dialled[1] != r.addr() {
		t.Fatalf("the hook dialled %v, want %s twice", dialled, r.addr())
	}
}

// TestOthersTakeWhatIsNotRaft: on one port, a connection that begins with
// a frame is Raft's, and one that begins otherwise (an HTTP/2 preface) is
// handed whole, first bytes included, to Others; Raft goes on meanwhile.
func TestOthersTakeWhatIsNotRaft(t *testing.T) {
	others := NewOthers()
	defer others.Close()
	r := startReceiverWith(t, &Factory{Others: others})
	if others.Addr().String() != r.addr() {
		t.Fatalf("Others.Addr = %v, want the peer listener's %s", others.Addr(), r.addr())
	}
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	preface := "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	if _, err := c.Write([]byte(preface)); err != nil {
		t.Fatal(err)
	}
	got, err := others.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	buf := make([]byte, len(preface))
	if _, err := io.ReadFull(got, buf); err != nil || string(buf) != preface {
		t.Fatalf("Others got %q (%v), want the preface", buf, err)
	}
	if _, err := got.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil || string(buf[:2]) != "ok" {
		t.Fatalf("the client read %q (%v)", buf[:2], err)
	}
	raft, err := r.t.GetConnection(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raft.Close()
	if err := raft.SendMessageBatch(testBatch([]byte("raft"))); err != nil {
		t.Fatal(err)
	}
	if b := recv(t, r.batches); string(b.Requests[0].Entries[0].Cmd) != "raft" {
		t.Fatalf("got %+v", b)
	}
}

// TestValidateRemembersOnlyValid: Validate answers as Dragonboat's check
// does, the first time and again.
func TestValidateRemembersOnlyValid(t *testing.T) {
	f := &Factory{}
	for range 2 {
		for _, addr := range []string{"127.0.0.1:2380", "node-1.example:12380", "127.0.0.1", "127.0.0.1:0", "host:port", ":2380", "a:b:c"} {
			if got, want := f.Validate(addr), config.IsValidAddress(addr); got != want {
				t.Fatalf("Validate(%q) = %v, want %v", addr, got, want)
			}
		}
	}
}
