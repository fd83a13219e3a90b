// Package faultproxy carries the connections between the nodes of an
// in-process test cluster through TCP proxies that a test can cut, as a
// network partition does.
//
// Each node listens on a real address that only the proxies and the test's
// own clients use, and advertises another (Advertise). A node opens its
// connections to other nodes with Dialer(itself): the dialer knows both
// ends, so it can send each connection through the proxy of its link
// (caller, callee), a listener of its own that relays to the callee's real
// address. Cutting a link (Partition) stops its proxies in both directions:
// what a node sends waits in the proxy and then in the kernel's buffers, so
// writes block and deadlines fire, and a new connection hangs until its
// context ends, as if its SYN were dropped. Heal lets the held bytes and
// connections through, as TCP delivers what it held once a partition ends.
// Bytes already past a proxy when the cut comes arrive, like packets in
// flight.
//
// Something that reaches an advertised address without the dialer (a path
// that would bypass the partition) is relayed too, and counted (Bypasses).
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// Network is the proxies of one cluster.
type Network struct {
	mu sync.Mutex
	// nodes maps an advertised address to its node and real address.
	nodes map[string]endpoint
	// links are the proxies, made on first use, by (caller, callee address).
	links map[link]net.Listener
	// side is each partitioned node's side; nodes on different sides are
	// cut from each other, nodes without one from nobody.
	side map[string]int
	// changed is closed and replaced whenever side changes or the network
	// closes, waking the relays and dials waiting on a cut link.
	changed chan struct{}
	closed  bool
	// listeners and conns are closed by Close.
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	// All fields above are guarded by mu.

	bypasses atomic.Int64
	wg       sync.WaitGroup
}

type endpoint struct{ node, real string }

type link struct{ from, to string }

// New returns a network with no nodes.
func New() *Network {
	return &Network{nodes: map[string]endpoint{}, links: map[link]net.Listener{}, side: map[string]int{},
		changed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
}

// Advertise returns the address node advertises for real (host:port each),
// the same for the same real address: a new loopback port, where a relay
// listens that counts the connections reaching it without the dialer.
func (n *Network) Advertise(node, real string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return "", errors.New("faultproxy: closed")
	}
	for advertised, e := range n.nodes {
		if e.real == real {
			return advertised, nil
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("faultproxy: %w", err)
	}
	advertised := ln.Addr().String()
	n.nodes[advertised] = endpoint{node: node, real: real}
	n.listeners = append(n.listeners, ln)
	n.wg.Add(1)
	go n.serve(ln, "", node, real, func() { n.bypasses.Add(1) })
	return advertised, nil
}

// Bypasses is how many connections reached an advertised address directly.
func (n *Network) Bypasses() int64 { return n.bypasses.Load() }

// Dialer returns the function with which node opens connections to the
// other nodes' advertised addresses (server.TestingKnobs.DialNode).
func (n *Network) Dialer(node string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		proxy, to, err := n.proxy(node, addr)
		if err != nil {
			return nil, err
		}
		if err := n.waitLink(ctx, node, to); err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", proxy)
	}
}

// Partition cuts every link between nodes of different groups; a node in
// no group keeps its links. It replaces the previous partition.
func (n *Network) Partition(groups ...[]string) {
	side := map[string]int{}
	for i, g := range groups {
		for _, node := range g {
			side[node] = i
		}
	}
	n.setSides(side)
}

// Heal restores every link.
func (n *Network) Heal() { n.setSides(map[string]int{}) }

func (n *Network) setSides(side map[string]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.side = side
	close(n.changed)
	n.changed = make(chan struct{})
}

// Close stops every proxy and ends every relayed connection.
func (n *Network) Close() {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.changed)
		for _, ln := range n.listeners {
			_ = ln.Close()
		}
		for c := range n.conns {
			_ = c.Close()
		}
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// proxy returns the address of the proxy of the link from node to the node
// advertising addr, starting it if need be, and that node's name.
func (n *Network) proxy(from, addr string) (proxy, to string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return "", "", errors.New("faultproxy: closed")
	}
	dst, ok := n.nodes[addr]
	if !ok {
		return "", "", fmt.Errorf("faultproxy: %s is no node's advertised address", addr)
	}
	key := link{from: from, to: addr}
	if ln, ok := n.links[key]; ok {
		return ln.Addr().String(), dst.node, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", fmt.Errorf("faultproxy: %w", err)
	}
	n.links[key] = ln
	n.listeners = append(n.listeners, ln)
	n.wg.Add(1)
	go n.serve(ln, from, dst.node, dst.real, func() {})
	return ln.Addr().String(), dst.node, nil
}

// cut reports whether the link between two nodes is cut, and returns the
// channel closed at the next change. A closed network cuts nothing: its
// relays are ending.
func (n *Network) cut(from, to string) (bool, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, okA := n.side[from]
	b, okB := n.side[to]
	return !n.closed && okA && okB && a != b, n.changed
}

// waitLink waits until the link between two nodes is up or ctx ends.
func (n *Network) waitLink(ctx context.Context, from, to string) error {
	for {
		cut, changed := n.cut(from, to)
		if !cut {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// serve relays each connection accepted on ln to real, over the link from
// node from to node to; accepted is called for each.
func (n *Network) serve(ln net.Listener, from, to, real string, accepted func()) {
	defer n.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted()
		n.wg.Add(1)
		go n.relay(c, from, to, real)
	}
}

// relay copies bytes both ways between c and a new connection to real,
// holding them while the link is cut; when either side ends, both do.
func (n *Network) relay(c net.Conn, from, to, real string) {
	defer n.wg.Done()
	if !n.track(c) {
		return
	}
	defer n.untrack(c)
	if err := n.waitLink(context.Background(), from, to); err != nil {
		return
	}
	d, err := net.Dial("tcp", real)
	if err != nil {
		return
	}
	if !n.track(d) {
		return
	}
	defer n.untrack(d)
	done := make(chan struct{})
	go func() {
		n.pump(d, c, from, to)
		close(done)
	}()
	n.pump(c, d, from, to)
	<-done
}

// pump copies src to dst, each chunk once the link is up; at the end of src
// (once the link is up: a partition holds the close too) it closes both.
func (n *Network) pump(src, dst net.Conn, from, to string) {
	buf := make([]byte, 32<<10)
	for {
		k, err := src.Read(buf)
		_ = n.waitLink(context.Background(), from, to)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			_ = src.Close()
			_ = dst.Close()
			return
		}
	}
}

// track records a relayed connection for Close; false (and c closed) once
// the network is closed.
func (n *Network) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		_ = c.Close()
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *Network) untrack(c net.Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
	_ = c.Close()
}
