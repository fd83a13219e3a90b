package server

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"sync"
	"time"
)

// A client URL serves gRPC and HTTP/1 on one port, as etcd's does: each
// connection goes to gRPC when it opens with HTTP/2's client preface and
// to the HTTP server otherwise (etcd splits them with cmux).

// http2Preface is how every HTTP/2 (gRPC) client connection begins
// ("PRI * HTTP/2.0…"); no HTTP/1 method begins with its first three bytes,
// which are all that is read to tell them apart, so a short HTTP/1
// request is not kept waiting for more.
var http2Preface = []byte("PRI")

// sniffTimeout bounds the wait for a new connection's first bytes.
const sniffTimeout = 10 * time.Second

// splitListener accepts connections on one listener and hands each to the
// gRPC or the HTTP listener by its first bytes.
type splitListener struct {
	ln         net.Listener
	grpc, http *connQueue
	// run runs a task on the node's stopper (each connection is routed in
	// one); it fails once the node is stopping.
	run func(func()) error
}

func splitListen(ln net.Listener, run func(func()) error) *splitListener {
	return &splitListener{ln: ln, grpc: newConnQueue(ln.Addr()), http: newConnQueue(ln.Addr()), run: run}
}

// serve accepts until the listener closes, then closes both queues.
func (s *splitListener) serve() {
	defer s.grpc.close()
	defer s.http.close()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if err := s.run(func() { s.route(c) }); err != nil {
			_ = c.Close()
		}
	}
}

// route reads enough of c to tell HTTP/2 from HTTP/1 and queues it; a
// connection that sends nothing for sniffTimeout is closed.
func (s *splitListener) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, len(http2Preface))
	head, err := br.Peek(len(http2Preface))
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		_ = c.Close()
		return
	}
	conn := &peekedConn{Conn: c, r: br}
	if bytes.Equal(head, http2Preface) {
		s.grpc.put(conn)
		return
	}
	s.http.put(conn)
}

// peekedConn reads what was peeked first.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connQueue is a net.Listener whose connections something else accepts.
type connQueue struct {
	addr      net.Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) put(c net.Conn) {
	select {
	case q.conns <- c:
	case <-q.done:
		_ = c.Close()
	}
}

// Accept implements net.Listener.
func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener; the listener it splits is closed apart.
func (q *connQueue) Close() error {
	q.close()
	return nil
}

func (q *connQueue) close() { q.closeOnce.Do(func() { close(q.done) }) }

// Addr implements net.Listener.
func (q *connQueue) Addr() net.Addr { return q.addr }
