package meta

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestOracleClientLeavesACutOffLeader: while a request for revisions waits
// on a meta leader that never answers (cut off from the other members),
// the members elect another; the client asks the new leader instead of
// waiting out its batch timeout.
func TestOracleClientLeavesACutOffLeader(t *testing.T) {
	// Node 1 accepts connections and never answers.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	reached := make(chan struct{})
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			select {
			case reached <- struct{}{}:
			default:
			}
		}
	}()
	// Node 3 serves revisions.
	threeStopper := newStopper(t)
	three := NewInternalServer(NewAllocator(newFake(3), threeStopper, 0), threeStopper)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tesserapb.RegisterInternalServer(srv, three)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	f := newFake(2)
	f.leader = 1
	f.state.Nodes = []*tesserapb.NodeInfo{
		{NodeId: 1, RaftAddress: hole.Addr().String()},
		{NodeId: 3, RaftAddress: ln.Addr().String()},
	}
	dir := NewDirectory(f, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer dir.Close()
	stopper := newStopper(t)
	c := NewOracleClient(f, NewAllocator(f, stopper, 0), dir, stopper)
	go func() {
		<-reached
		f.mu.Lock()
		f.leader, f.term = 3, 2
		f.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := c.NextN(ctx, 1)
	if err != nil || first < InitialHighWater {
		t.Fatalf("NextN = %d, %v; want a revision from node 3", first, err)
	}
}
