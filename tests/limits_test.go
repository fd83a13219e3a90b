package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/server"
)

// TestMaxConcurrentStreams: with --max-concurrent-streams 1, a client
// connection holding a Watch stream open gets no other call served on it
// until the stream ends; the node serves other connections meanwhile.
func TestMaxConcurrentStreams(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *server.Config) { cfg.MaxConcurrentStreams = 1 })
	ctx := ctxT(t)
	addr := strings.TrimPrefix(c.Nodes[0].ClientURL, "http://")
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	kv := pb.NewKVClient(cc)
	if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	w, err := pb.NewWatchClient(cc).Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("k")}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := w.Recv(); err != nil || !resp.Created {
		t.Fatalf("watch: %v %v", resp, err)
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	_, err = kv.Range(short, &pb.RangeRequest{Key: []byte("k")})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a second stream on the connection: %v, want it held back", err)
	}
	if _, err := c.Client(c.Nodes[0].ClientURL).Get(ctx, "k"); err != nil {
		t.Fatalf("another connection meanwhile: %v", err)
	}
	stopWatch()
	deadline := time.Now().Add(10 * time.Second)
	for {
		short, cancel := context.WithTimeout(ctx, time.Second)
		_, err := kv.Range(short, &pb.RangeRequest{Key: []byte("k")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the watch ended: %v", err)
		}
	}
}
