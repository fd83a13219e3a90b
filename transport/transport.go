// Package transport is the node-to-node transport of Dragonboat's Raft traffic
// (config.TransportFactory): message batches and snapshot chunks over plain
// TCP between the members' peer addresses.
//
// It exists for two reasons. Dragonboat's built-in TCP transport writes
// every batch with three writes (magic number, header, payload) and reads it
// with three or more reads; here a frame is one write, and a buffered reader
// takes in every frame that has arrived with one read. And owning the
// transport gives the node Dragonboat's incoming-message path, through which
// Campaign tells a local replica to stand for election at once.
//
// Dragonboat's own transport layer above this one still queues, batches per
// target and reconnects. A frame is a 12-byte header — magic (2 bytes), kind
// (1), zero (1), payload length (4, big-endian), CRC-32C of the payload (4)
// — and the payload, a marshalled raftpb.MessageBatch or raftpb.Chunk. The
// format is not Dragonboat's: every member of a cluster must run a binary
// with this transport (members with Dragonboat's transport and members with
// this one drop each other's connections).
package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
)

// Name is the transport's name as Dragonboat reports it.
const Name = "tessera-tcp"

const (
	headerLen = 12
	magic0    = 0x54 // 'T'
	magic1    = 0x52 // 'R'

	kindBatch byte = 1
	kindChunk byte = 2

	// maxPayload bounds a frame's payload. Dragonboat caps a batch at 64 MiB
	// plus one message and a snapshot chunk at 2 MiB; a longer length means
	// a corrupt stream or a stranger.
	maxPayload = 512 << 20

	// keepBuffer is the largest send or receive buffer a connection keeps
	// between frames; larger frames get a buffer of their own.
	keepBuffer = 4 << 20
	// readBuffer is the size of a receiving connection's buffered reader.
	readBuffer = 64 << 10

	dialTimeout      = 5 * time.Second
	frameBaseTimeout = 10 * time.Second
	keepAlive        = 10 * time.Second
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Factory makes the transport; set it as NodeHostConfig.Expert.TransportFactory.
// One Factory serves one NodeHost.
type Factory struct {
	// Log receives the transport's warnings (nil: slog.Default()).
	Log *slog.Logger
	// Dial opens the connections to other nodes (nil: TCP with keepalive).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Resolve, when set, maps the address a Raft membership records a node
	// under to where the node listens now (a node whose peer URL changed);
	// every connection dials what it returns.
	Resolve func(ctx context.Context, target string) string
	// Others, when set, takes the peer port's connections that are not
	// Raft traffic (see Others); without it they are closed.
	Others *Others
	// ServerTLS, when set, is the peer listener's TLS (peer TLS): every
	// connection, Raft's or Others', goes through its handshake first.
	// ClientTLS is then the TLS of the connections this node opens.
	ServerTLS, ClientTLS *tls.Config

	mu sync.Mutex
	t  *TCP // the transport made last; guarded by mu

	valid sync.Map // addresses Validate found valid
}

var _ config.TransportFactory = (*Factory)(nil)

// Create implements config.TransportFactory.
func (f *Factory) Create(nhc config.NodeHostConfig, onBatch raftio.MessageHandler, onChunk raftio.ChunkHandler) raftio.ITransport {
	log := f.Log
	if log == nil {
		log = slog.Default()
	}
	t := &TCP{
		listenAddr:   nhc.GetListenAddress(),
		deploymentID: nhc.GetDeploymentID(),
		onBatch:      onBatch,
		onChunk:      onChunk,
		log:          log.With("component", "transport"),
		dial:         f.Dial,
		resolve:      f.Resolve,
		others:       f.Others,
		serverTLS:    f.ServerTLS,
		clientTLS:    f.ClientTLS,
		conns:        make(map[net.Conn]struct{}),
	}
	f.mu.Lock()
	f.t = t
	f.mu.Unlock()
	return t
}

// Validate implements config.TransportFactory: addresses are host:port.
// Dragonboat validates the sender's address of every message it receives,
// and its check runs regular expressions: an address once found valid is
// remembered (a cluster has few).
func (f *Factory) Validate(addr string) bool {
	if _, ok := f.valid.Load(addr); ok {
		return true
	}
	if !config.IsValidAddress(addr) {
		return false
	}
	f.valid.Store(addr, struct{}{})
	return true
}

// Transport returns the transport the factory made (nil before NodeHost
// made one).
func (f *Factory) Transport() *TCP {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// TCP is one node's raftio.ITransport.
type TCP struct {
	listenAddr   string
	deploymentID uint64
	onBatch      raftio.MessageHandler
	onChunk      raftio.ChunkHandler
	log          *slog.Logger
	dial         func(ctx context.Context, addr string) (net.Conn, error) // nil: net.Dialer
	resolve      func(ctx context.Context, target string) string          // nil: target as it is
	others       *Others                                                  // nil: none
	serverTLS    *tls.Config                                              // nil: plain TCP
	clientTLS    *tls.Config

	wg sync.WaitGroup

	mu sync.Mutex
	// ln is the listener, nil before Start. Guarded by mu.
	ln net.Listener
	// conns holds the accepted connections being served. Guarded by mu.
	conns map[net.Conn]struct{}
	// closed is set by Close. Guarded by mu.
	closed bool
}

var _ raftio.ITransport = (*TCP)(nil)

// Name implements raftio.ITransport.
func (t *TCP) Name() string { return Name }

// Campaign makes this node's replica of a Raft group stand for election now
// instead of after its election timeout. It hands the replica a TimeoutNow
// message, which is what a leader sends the target of a leadership
// transfer; Raft treats it as the clock running forward, so it is as safe as
// any election, but a live leader the replica has not heard from yet loses
// its leadership. Use it where a group has no leader to lose (a range a
// split has just made). Messages to a replica not started yet are dropped.
func (t *TCP) Campaign(shardID, replicaID uint64) {
	t.onBatch(pb.MessageBatch{
		DeploymentId: t.deploymentID,
		BinVer:       raftio.TransportBinVersion,
		Requests: []pb.Message{{
			Type:    pb.TimeoutNow,
			ShardID: shardID,
			To:      replicaID,
			From:    replicaID,
		}},
	})
}

// Start implements raftio.ITransport: it listens on the node's listen address.
func (t *TCP) Start() error {
	ln, err := net.Listen("tcp", t.listenAddr)
	if err != nil {
		return fmt.Errorf("transport: listening on %s: %w", t.listenAddr, err)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		_ = ln.Close()
		return errors.New("transport: transport closed")
	}
	if t.serverTLS != nil {
		ln = tls.NewListener(ln, t.serverTLS)
	}
	t.ln = ln
	t.mu.Unlock()
	if t.others != nil {
		t.others.setAddr(ln.Addr())
	}
	t.wg.Add(1)
	go t.accept(ln)
	return nil
}

// Addr returns the address the transport listens on (nil before Start).
func (t *TCP) Addr() net.Addr {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ln == nil {
		return nil
	}
	return t.ln.Addr()
}

// Close implements raftio.ITransport: it stops listening, closes the
// connections it accepted and waits for their readers to return. Dragonboat
// closes the connections it dialled itself.
func (t *TCP) Close() error {
	t.mu.Lock()
	t.closed = true
	if t.ln != nil {
		_ = t.ln.Close()
	}
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

func (t *TCP) accept(ln net.Listener) {
	defer t.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			t.log.Warn("accepting a Raft connection failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			_ = c.Close()
			return
		}
		t.conns[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go t.serve(c)
	}
}

// firstByteWait bounds the wait for an accepted connection's first byte.
const firstByteWait = 30 * time.Second

// serve reads frames from one accepted connection until it fails or
// closes, or passes it on to Others when it carries no frames.
func (t *TCP) serve(c net.Conn) {
	defer t.wg.Done()
	handedOff := false
	defer func() {
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
		if !handedOff {
			_ = c.Close()
		}
	}()
	r := bufio.NewReaderSize(c, readBuffer)
	_ = c.SetReadDeadline(time.Now().Add(firstByteWait))
	first, err := r.Peek(1) // with peer TLS, after the handshake
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		if t.serverTLS != nil && !errors.Is(err, io.EOF) {
			t.log.Warn("refused a peer connection", "remote", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	if first[0] != magic0 {
		if t.others != nil {
			handedOff = t.others.deliver(&bufferedConn{Conn: c, r: r})
		}
		return
	}
	err = t.readFrames(r, c.SetReadDeadline)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		t.log.Warn("dropping a Raft connection", "remote", c.RemoteAddr().String(), "err", err)
	}
}

// errChunkRefused ends a snapshot connection whose chunk Dragonboat refused.
var errChunkRefused = errors.New("transport: snapshot chunk refused")

// readFrames hands each frame read from r to Dragonboat until r fails.
// Between frames a connection may stay idle as long as it likes (TCP
// keepalive finds dead peers); once a header has arrived, setDeadline bounds
// the wait for its payload like the sender's write deadline, so a peer that
// stops mid-frame does not hold the connection and its buffer.
func (t *TCP) readFrames(r io.Reader, setDeadline func(time.Time) error) error {
	var hdr [headerLen]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		kind, n, sum, err := parseHeader(hdr)
		if err != nil {
			return err
		}
		payload := buf
		if n > cap(payload) {
			payload = make([]byte, n)
			if n <= keepBuffer {
				buf = payload
			}
		}
		payload = payload[:n]
		if err := setDeadline(time.Now().Add(frameTimeout(n))); err != nil {
			return err
		}
		if _, err := io.ReadFull(r, payload); err != nil {
			return err
		}
		if err := setDeadline(time.Time{}); err != nil {
			return err
		}
		if crc32.Checksum(payload, castagnoli) != sum {
			return errors.New("transport: frame checksum mismatch")
		}
		// Unmarshal copies every byte field, so payload is free for reuse
		// once the handler has the decoded value.
		switch kind {
		case kindBatch:
			var b pb.MessageBatch
			if err := b.Unmarshal(payload); err != nil {
				return fmt.Errorf("transport: decoding a message batch: %w", err)
			}
			t.onBatch(b)
		case kindChunk:
			var ch pb.Chunk
			if err := ch.Unmarshal(payload); err != nil {
				return fmt.Errorf("transport: decoding a snapshot chunk: %w", err)
			}
			if !t.onChunk(ch) {
				return errChunkRefused
			}
		}
	}
}

// parseHeader checks a frame header and returns its kind, payload length and
// checksum.
func parseHeader(hdr [headerLen]byte) (kind byte, n int, sum uint32, err error) {
	if hdr[0] != magic0 || hdr[1] != magic1 || hdr[3] != 0 {
		return 0, 0, 0, errors.New("transport: not a Tessera Raft frame (do all members run the same Tessera version?)")
	}
	kind = hdr[2]
	if kind != kindBatch && kind != kindChunk {
		return 0, 0, 0, fmt.Errorf("transport: unknown frame kind %d", kind)
	}
	size := binary.BigEndian.Uint32(hdr[4:8])
	if size > maxPayload {
		return 0, 0, 0, fmt.Errorf("transport: frame of %d bytes is over the %d-byte limit", size, maxPayload)
	}
	return kind, int(size), binary.BigEndian.Uint32(hdr[8:12]), nil
}

// frameTimeout is how long writing, or reading the payload of, an n-byte
// frame may take: ten seconds, and one more per MiB (a large batch on a slow
// link is slow, not dead).
func frameTimeout(n int) time.Duration {
	return frameBaseTimeout + time.Duration(n>>20)*time.Second
}

// marshaler is what raftpb's MessageBatch and Chunk have in common.
type marshaler interface {
	MarshalTo([]byte) (int, error)
}

// conn is one dialled connection; Dragonboat uses each from one goroutine.
type conn struct {
	c   net.Conn
	buf []byte
}

var (
	_ raftio.IConnection         = (*conn)(nil)
	_ raftio.ISnapshotConnection = (*conn)(nil)
)

// GetConnection implements raftio.ITransport.
func (t *TCP) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	return t.connect(ctx, target)
}

// GetSnapshotConnection implements raftio.ITransport.
func (t *TCP) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	return t.connect(ctx, target)
}

func (t *TCP) connect(ctx context.Context, target string) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if t.resolve != nil {
		target = t.resolve(ctx, target)
	}
	var c net.Conn
	var err error
	if t.dial == nil {
		d := net.Dialer{KeepAlive: keepAlive}
		c, err = d.DialContext(ctx, "tcp", target)
	} else {
		c, err = t.dial(ctx, target)
	}
	if err != nil {
		return nil, err
	}
	if t.clientTLS != nil {
		c, err = clientHandshake(ctx, c, target, t.clientTLS)
		if err != nil {
			return nil, err
		}
	}
	return &conn{c: c}, nil
}

// clientHandshake runs a TLS client handshake on c to target (host:port),
// verifying the server's certificate for target's host.
func clientHandshake(ctx context.Context, c net.Conn, target string, cfg *tls.Config) (net.Conn, error) {
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(target); err == nil {
			cfg.ServerName = host
		}
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("transport: TLS with %s: %w", target, err)
	}
	return tc, nil
}

// Close implements raftio.IConnection and raftio.ISnapshotConnection. Frames
// already written are still delivered: the connection ends with a normal
// close, not a reset.
func (c *conn) Close() { _ = c.c.Close() }

// SendMessageBatch implements raftio.IConnection.
func (c *conn) SendMessageBatch(b pb.MessageBatch) error {
	return c.send(kindBatch, &b, b.SizeUpperLimit())
}

// SendChunk implements raftio.ISnapshotConnection.
func (c *conn) SendChunk(ch pb.Chunk) error {
	return c.send(kindChunk, &ch, ch.Size())
}

// send writes one frame holding m (at most limit bytes marshalled) with one
// write.
func (c *conn) send(kind byte, m marshaler, limit int) error {
	buf := c.buf
	if headerLen+limit > cap(buf) {
		buf = make([]byte, headerLen+limit)
		if len(buf) <= keepBuffer {
			c.buf = buf
		}
	}
	buf = buf[:headerLen+limit]
	n, err := m.MarshalTo(buf[headerLen:])
	if err != nil {
		return err
	}
	if n > maxPayload {
		return fmt.Errorf("transport: frame of %d bytes is over the %d-byte limit", n, maxPayload)
	}
	payload := buf[headerLen : headerLen+n]
	buf[0], buf[1], buf[2], buf[3] = magic0, magic1, kind, 0
	binary.BigEndian.PutUint32(buf[4:8], uint32(n))
	binary.BigEndian.PutUint32(buf[8:12], crc32.Checksum(payload, castagnoli))
	if err := c.c.SetWriteDeadline(time.Now().Add(frameTimeout(n))); err != nil {
		return err
	}
	_, err = c.c.Write(buf[:headerLen+n])
	return err
}
