// Package testcluster starts in-process Tessera nodes on 127.0.0.1 with random
// free ports and temporary data directories, for tests that drive them with the
// real etcd client.
package testcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tesserakv/tessera/server"
)

// Node is one in-process node.
type Node struct {
	Config    server.Config
	Server    *server.Server
	ClientURL string
}

// Cluster is a set of nodes started together.
type Cluster struct {
	dataRoot string
	opts     []Options
	t        testing.TB
	Nodes    []*Node
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// picks one below the kernel's ephemeral range when it can: a port the
// kernel handed out for a listen on port 0 is in that range, and once freed
// it may be given to any outgoing connection (the tests make many) before
// the node binds it ("address already in use"). It never hands out the
// same port twice in one process: a port handed out may not be bound yet
// when the next is asked for (a cluster picks its members' ports first).
func FreePort(t testing.TB) int {
	t.Helper()
	if low := ephemeralLow(); low-minPickedPort > 1000 {
		for range 100 {
			port := minPickedPort + rand.IntN(low-minPickedPort)
			if _, taken := handedOut.Load(port); taken {
				continue
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				continue
			}
			_ = ln.Close()
			if _, taken := handedOut.LoadOrStore(port, true); !taken {
				return port
			}
		}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if _, taken := handedOut.LoadOrStore(port, true); !taken {
			return port
		}
	}
	t.Fatal("no free port that was not handed out before")
	return 0
}

// handedOut holds the ports FreePort returned.
var handedOut sync.Map

// minPickedPort is the lowest port FreePort picks itself (clear of the
// well-known and registered ports servers on a machine commonly use).
const minPickedPort = 20000

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return 32768
	}
	return low
}

// Options adjust every node's config before start.
type Options func(*server.Config)

// Start starts an n-node cluster and waits until it has a leader that serves
// writes. Nodes are closed when the test ends.
func Start(t testing.TB, n int, opts ...Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var members []server.Member
	for i := range n {
		members = append(members, server.Member{Name: fmt.Sprintf("n%d", i+1), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))})
	}
	c.dataRoot, c.opts = t.TempDir(), opts
	for i := range n {
		c.Nodes = append(c.Nodes, c.newNode(members[i], members))
	}
	for _, node := range c.Nodes {
		c.StartNode(node)
	}
	t.Cleanup(c.Close)
	c.Leader()
	c.waitRegistered()
	return c
}

// newNode makes the config of a node (not started) with the test's options.
func (c *Cluster) newNode(self server.Member, members []server.Member) *Node {
	cfg := server.DefaultConfig()
	cfg.Name = self.Name
	cfg.DataDir = fmt.Sprintf("%s/%s", c.dataRoot, cfg.Name)
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(c.t))
	cfg.ListenClientURLs = []string{clientURL}
	cfg.AdvertiseClientURLs = []string{clientURL}
	cfg.ListenPeerURLs = []string{self.PeerURL}
	cfg.InitialAdvertisePeerURLs = []string{self.PeerURL}
	cfg.InitialCluster = members
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.ElectionTimeout = 500 * time.Millisecond
	// Replicas and leaders move only where a test asks (a test of
	// placement turns it on).
	cfg.PlacementInterval = -1
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		cfg.Logger = slog.Default().With("node", cfg.Name)
	}
	for _, o := range c.opts {
		o(&cfg)
	}
	if strings.HasPrefix(cfg.ListenClientURLs[0], "https://") {
		clientURL = "https://" + strings.TrimPrefix(clientURL, "http://")
	}
	return &Node{Config: cfg, ClientURL: clientURL}
}

// AddNode starts one more node, which joins the running cluster through the
// others (--join), and returns it once it is registered.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	return c.AddNodeAt(fmt.Sprintf("http://127.0.0.1:%d", FreePort(c.t)))
}

// AddNodeAt is AddNode with the new node's peer URL given.
func (c *Cluster) AddNodeAt(peerURL string) *Node {
	c.t.Helper()
	self := server.Member{Name: fmt.Sprintf("n%d", len(c.Nodes)+1), PeerURL: peerURL}
	node := c.newNode(self, []server.Member{self})
	node.Config.Join = c.Endpoints()
	c.StartNode(node)
	c.Nodes = append(c.Nodes, node)
	c.waitRegistered()
	return node
}

// waitRegistered waits, up to 10s, until every node knows every node's
// address: until then a node forwarding to another (the oracle's leader,
// say) fails with "node not registered".
func (c *Cluster) waitRegistered() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, node := range c.Nodes {
		for node.Server.Testing().RegisteredNodes(context.Background()) < len(c.Nodes) {
			if time.Now().After(deadline) {
				c.t.Fatalf("%s knows %d of %d nodes after 10s", node.Config.Name, node.Server.Testing().RegisteredNodes(context.Background()), len(c.Nodes))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// StartNode (re)starts a node with its config.
func (c *Cluster) StartNode(node *Node) {
	c.t.Helper()
	srv, err := server.Start(node.Config)
	if err != nil {
		c.t.Fatalf("starting %s: %v", node.Config.Name, err)
	}
	node.Server = srv
}

// StopNode closes a node; its data stays.
func (c *Cluster) StopNode(node *Node) {
	if node.Server != nil {
		node.Server.Close()
		node.Server = nil
	}
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		c.StopNode(n)
	}
}

// Endpoints of the running nodes.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, n := range c.Nodes {
		if n.Server != nil {
			out = append(out, n.ClientURL)
		}
	}
	return out
}

// Leader returns the node leading the range, waiting up to 10s for one.
func (c *Cluster) Leader() *Node {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range c.Nodes {
			if n.Server != nil && n.Server.Testing().IsLeader() {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no leader within 10s")
	return nil
}

// Client returns a clientv3 client for the given endpoints (all running nodes
// when none are given), closed when the test ends.
func (c *Cluster) Client(endpoints ...string) *clientv3.Client {
	c.t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}
