package transport

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// Others is a net.Listener of the peer port's connections that carry no
// Raft frames: the transport accepts every connection on the peer port,
// reads its first byte, and passes the connection on here when it is not
// the first byte of a frame (an HTTP/2 client's preface begins with 'P').
// A gRPC server serving Others answers the other nodes on the peer port.
type Others struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu   sync.Mutex
	addr net.Addr // the peer listener's, once it listens; guarded by mu
}

// othersWait bounds how long the transport waits for the server to take a
// connection passed on (it may not serve yet while its node starts).
const othersWait = 30 * time.Second

// NewOthers returns an Others to set as Factory.Others.
func NewOthers() *Others {
	return &Others{conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept implements net.Listener.
func (o *Others) Accept() (net.Conn, error) {
	select {
	case c := <-o.conns:
		return c, nil
	case <-o.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: later connections are closed as they come.
func (o *Others) Close() error {
	o.once.Do(func() { close(o.done) })
	return nil
}

// Addr implements net.Listener: the peer listener's address.
func (o *Others) Addr() net.Addr {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.addr == nil {
		return &net.TCPAddr{}
	}
	return o.addr
}

func (o *Others) setAddr(a net.Addr) {
	o.mu.Lock()
	o.addr = a
	o.mu.Unlock()
}

// deliver passes c on, reporting false when nobody took it.
func (o *Others) deliver(c net.Conn) bool {
	t := time.NewTimer(othersWait)
	defer t.Stop()
	select {
	case o.conns <- c:
		return true
	case <-o.done:
	case <-t.C:
	}
	return false
}

// bufferedConn is a connection whose first bytes were read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
