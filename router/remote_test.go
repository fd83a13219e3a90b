package router

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
)

// TestRemoteLeaderThatDoesNotAnswerIsForgotten: a request to the known
// leader of a range held elsewhere that gets no answer before its deadline
// (a node cut off from the others) makes the router forget that leader, so
// the next request asks the other replicas instead of waiting on it again.
func TestRemoteLeaderThatDoesNotAnswerIsForgotten(t *testing.T) {
	nodes := startPeersOf(t, map[uint64]tesserapb.InternalServer{
		1: tesserapb.UnimplementedInternalServer{}, 2: tesserapb.UnimplementedInternalServer{}, 3: tesserapb.UnimplementedInternalServer{},
	})
	r := New(Config{}, NewRangeCache(), nodes, nil)
	m := newRemoteRange(&tesserapb.RangeDescriptor{RangeId: 5, ReplicaNodeIds: []uint64{1, 2, 3}})
	m.noteLeader(1, true)
	var asked []*grpc.ClientConn
	call := func(ctx context.Context, cc *grpc.ClientConn) error {
		asked = append(asked, cc)
		if cc == nodes[1] {
			<-ctx.Done() // cut off: never answers
			return ctx.Err()
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if err := r.onReplica(ctx, m, call); err == nil {
		t.Fatal("a request to a node that never answers succeeded")
	}
	cancel()
	if leader, _, known := m.Leader(); known {
		t.Fatalf("node %d is still the leader after not answering", leader)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.onReplica(ctx, m, call); err != nil {
		t.Fatalf("the next request: %v", err)
	}
	if len(asked) != 2 || asked[1] == nodes[1] {
		t.Fatal("the next request went to the node that did not answer")
	}
}

// TestReadOfUnreachableRangeIsNoLeader: a read of a range held elsewhere
// whose replicas' nodes all refuse connections fails with etcd's "no
// leader", which clients retry, not with a peer's dial error.
func TestReadOfUnreachableRangeIsNoLeader(t *testing.T) {
	nodes := peers{}
	for id := uint64(1); id <= 3; id++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nobody listens there now
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		nodes[id] = cc
	}
	r := New(Config{}, NewRangeCache(), nodes, nil)
	m := newRemoteRange(&tesserapb.RangeDescriptor{RangeId: 5, ReplicaNodeIds: []uint64{1, 2, 3}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := r.readSpan(ctx, m, &pb.RangeRequest{Key: []byte("k")}, false, false)
	if !errors.Is(err, shard.ErrNoLeader) || ToGRPC(err) != rpctypes.ErrGRPCNoLeader {
		t.Fatalf("read with every replica unreachable: %v, want etcd's no leader", err)
	}
}
