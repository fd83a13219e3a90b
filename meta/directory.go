package meta

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// registryWait bounds how long Conn waits for a just-started node to register
// its address.
const registryWait = 2 * time.Second

// Directory finds other nodes through the node registry of the meta range
// and keeps one client connection per node.
type Directory struct {
	meta     metaRaft
	dialOpts []grpc.DialOption

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by target address; guarded by mu
}

// NewDirectory returns a directory over this node's meta replica; dialOpts
// are the options of every connection it makes (transport credentials
// included).
func NewDirectory(meta metaRaft, dialOpts ...grpc.DialOption) *Directory {
	return &Directory{meta: meta, dialOpts: dialOpts, conns: map[string]*grpc.ClientConn{}}
}

// Register records this node's addresses in the meta range, retrying until
// it lands or ctx ends.
func (d *Directory) Register(ctx context.Context, node *tesserapb.NodeInfo) error {
	cmd := &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_RegisterNode{RegisterNode: &tesserapb.RegisterNodeCommand{Node: node}}}
	return withRetries(ctx, func() error { return d.meta.Propose(ctx, cmd) })
}

// Nodes returns the registered nodes as this replica knows them.
func (d *Directory) Nodes(ctx context.Context) ([]*tesserapb.NodeInfo, error) {
	st, err := State(ctx, d.meta, false)
	if err != nil {
		return nil, err
	}
	return st.Nodes, nil
}

// target returns a node's peer address (where the other nodes reach its
// gRPC services beside its Raft traffic) as this replica knows it, ""
// while the node has not registered one. Every forwarded request asks, so
// it reads the registry in place rather than copying the meta state.
func (d *Directory) target(ctx context.Context, nodeID uint64) (string, error) {
	return d.peerAddressOf(ctx, func(n *tesserapb.NodeInfo) bool { return n.NodeId == nodeID })
}

// peerAddressOf returns the current peer address of the first registered
// node that match accepts, "" when none does, reading the registry in place
// rather than copying the meta state.
func (d *Directory) peerAddressOf(ctx context.Context, match func(*tesserapb.NodeInfo) bool) (string, error) {
	out, err := d.meta.Read(ctx, false, func(st *tesserapb.MetaState) (any, error) {
		for _, n := range st.Nodes {
			if match(n) {
				return PeerAddress(n), nil
			}
		}
		return "", nil
	})
	if err != nil {
		return "", err
	}
	return out.(string), nil
}

// RaftAddress returns a registered node's Raft address (its name in Raft
// memberships, see PeerAddress) as this replica knows it.
// An unregistered node is gRPC NotFound.
func (d *Directory) RaftAddress(ctx context.Context, nodeID uint64) (string, error) {
	nodes, err := d.Nodes(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.NodeId == nodeID && n.RaftAddress != "" {
			return n.RaftAddress, nil
		}
	}
	return "", status.Errorf(codes.NotFound, "tessera: node %d is not registered", nodeID)
}

// Conn returns a client connection to a node, waiting briefly for a node
// that has just started to register. It takes a node's ID or the ID of a
// replica the node holds (see internal/replicaid).
func (d *Directory) Conn(ctx context.Context, nodeID uint64) (*grpc.ClientConn, error) {
	nodeID = replicaid.NodeOf(nodeID)
	deadline := time.Now().Add(registryWait)
	var target string
	for {
		var err error
		if target, err = d.target(ctx, nodeID); err != nil {
			return nil, err
		}
		if target != "" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: node %d", ErrUnknownNode, nodeID)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cc, ok := d.conns[target]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(target, d.dialOpts...)
	if err != nil {
		return nil, err
	}
	d.conns[target] = cc
	return cc, nil
}

// Close closes every connection.
func (d *Directory) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for target, cc := range d.conns {
		_ = cc.Close()
		delete(d.conns, target)
	}
}

// PeerAddress is where other nodes reach a node now: its peer address if
// it has one, else its Raft address. A node's Raft address is what every
// Raft membership records it under and never changes; MemberUpdate, or the
// node itself registering after a restart on another peer URL, sets the
// peer address, and the Raft transport dials it (ResolvePeer).
func PeerAddress(n *tesserapb.NodeInfo) string {
	if n.PeerAddress != "" {
		return n.PeerAddress
	}
	return n.RaftAddress
}

// ResolvePeer returns the current peer address of the node whose Raft
// address is raftAddr, as this replica knows it; raftAddr itself when no
// registered node has it or the meta replica cannot answer yet.
func (d *Directory) ResolvePeer(ctx context.Context, raftAddr string) string {
	addr, err := d.peerAddressOf(ctx, func(n *tesserapb.NodeInfo) bool { return n.RaftAddress == raftAddr })
	if err != nil || addr == "" {
		return raftAddr
	}
	return addr
}

// AddressUsed reports the registered node, other than except, whose Raft or
// peer address is addr (0: none). Raft addresses of nodes whose peer
// address has changed stay taken: the transport resolves them to the node.
func AddressUsed(nodes []*tesserapb.NodeInfo, addr string, except uint64) uint64 {
	for _, n := range nodes {
		if n.NodeId != except && (n.RaftAddress == addr || n.PeerAddress == addr) {
			return n.NodeId
		}
	}
	return 0
}

// HostPort strips the scheme of a URL ("http://127.0.0.1:2379").
func HostPort(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		url = url[i+3:]
	}
	return strings.TrimSuffix(url, "/")
}
