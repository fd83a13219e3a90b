package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
)

// TestLeaderHint: the leader a forwarded write's refusal names is read from
// its NotLeader detail, never from its text.
func TestLeaderHint(t *testing.T) {
	for _, c := range []struct {
		err  error
		want uint64
	}{
		{notLeaderStatus(3, &shard.NotLeaderError{LeaderReplicaID: 3}), 3},
		{notLeaderStatus(12, &shard.NotLeaderError{LeaderReplicaID: 12}), 12},
		{notLeaderStatus(0, &shard.NotLeaderError{}), 0},
		{status.Error(codes.FailedPrecondition, (&shard.NotLeaderError{LeaderReplicaID: 3}).Error()), 0},
		{status.Error(codes.FailedPrecondition, "tessera: range 4 is not on this node"), 0},
		{errors.New("not a status"), 0},
	} {
		if got := leaderHint(c.err); got != c.want {
			t.Errorf("leaderHint(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// notLeaderRange is a range replica (ID 1) that is never the leader and
// believes replica 2 is.
type notLeaderRange struct{ boundsOnly }

func (n *notLeaderRange) Leader() (uint64, uint64, bool) { return 2, 1, true }
func (n *notLeaderRange) Write(context.Context, *tesserapb.Command, bool) (*tesserapb.Result, error) {
	return nil, &shard.NotLeaderError{LeaderReplicaID: 2}
}

// peer is another node's Internal service: it refuses writes naming
// next as the leader, or (next 0) takes it.
type peer struct {
	tesserapb.UnimplementedInternalServer
	next  uint64
	calls atomic.Int64
}

func (p *peer) write(context.Context, *tesserapb.RangeWriteRequest) (*tesserapb.RangeWriteResponse, error) {
	p.calls.Add(1)
	if p.next != 0 {
		return nil, notLeaderStatus(p.next, &shard.NotLeaderError{LeaderReplicaID: p.next})
	}
	return &tesserapb.RangeWriteResponse{Result: &tesserapb.Result{}}, nil
}

func (p *peer) RangeWriteStream(s tesserapb.Internal_RangeWriteStreamServer) error {
	return serveRangeWrites(s, nil, p.write)
}

// peers serves each peer on its own 127.0.0.1 port and connects to them.
type peers map[uint64]*grpc.ClientConn

func startPeers(t *testing.T, byID map[uint64]*peer) peers {
	servers := map[uint64]tesserapb.InternalServer{}
	for id, p := range byID {
		servers[id] = p
	}
	return startPeersOf(t, servers)
}

// startPeersOf is startPeers for any Internal services.
func startPeersOf(t *testing.T, byID map[uint64]tesserapb.InternalServer) peers {
	out := peers{}
	for id, p := range byID {
		_, out[id] = serveInternal(t, p)
	}
	return out
}

// serveInternal serves an Internal service on a 127.0.0.1 port and connects
// to it; both are closed when the test ends.
func serveInternal(t *testing.T, p tesserapb.InternalServer) (*grpc.Server, *grpc.ClientConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tesserapb.RegisterInternalServer(srv, p)
	go func() { _ = srv.Serve(ln) }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close(); srv.Stop() })
	return srv, cc
}

func (p peers) Conn(_ context.Context, id uint64) (*grpc.ClientConn, error) {
	if cc := p[id]; cc != nil {
		return cc, nil
	}
	return nil, fmt.Errorf("no node %d", id)
}

// TestWriteFollowsNamedLeader: this node thinks replica 2 leads; replica 2
// says replica 3 does; the write goes on to replica 3 and lands there.
func TestWriteFollowsNamedLeader(t *testing.T) {
	two, three := &peer{next: 3}, &peer{}
	r := New(Config{}, NewRangeCache(), startPeers(t, map[uint64]*peer{2: two, 3: three}), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.writeTo(ctx, &notLeaderRange{boundsOnly{id: 5}}, &tesserapb.Command{}, true, 0); err != nil {
		t.Fatalf("write: %v", err)
	}
	if two.calls.Load() != 1 || three.calls.Load() != 1 {
		t.Fatalf("asked replica 2 %d times and replica 3 %d times, want once each", two.calls.Load(), three.calls.Load())
	}
}

// TestWriteWithoutReadyLeader: while every node names another that is not
// ready either, the write retries for its budget, then answers etcd's
// retryable "no leader".
func TestWriteWithoutReadyLeader(t *testing.T) {
	two := &peer{next: 1} // names this node, which names 2 again
	r := New(Config{}, NewRangeCache(), startPeers(t, map[uint64]*peer{2: two}), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.writeTo(ctx, &notLeaderRange{boundsOnly{id: 5}}, &tesserapb.Command{}, true, 0)
	if !errors.Is(err, shard.ErrNoLeader) || ToGRPC(err) != rpctypes.ErrGRPCNoLeader {
		t.Fatalf("got %v, want etcd's no-leader", err)
	}
	if n := two.calls.Load(); n < 3 {
		t.Fatalf("asked replica 2 only %d times before giving up", n)
	}
}
