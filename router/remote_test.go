package router

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tesserakv/tessera/proto/tesserapb"
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
