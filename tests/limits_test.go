package tests

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// TestClientsThatNeverRead: a client opens two thousand Watch streams over
// a prefix of 64 KiB values, half of them from the first revision (catching
// up from history), and never reads an answer. The node's memory stays
// bounded (its peak resident size, VmHWM, under 2 GiB, where copying the
// prefix to every stream would take 25), other clients are served
// meanwhile, and the streams' resources are released when the client goes.
func TestClientsThatNeverRead(t *testing.T) {
	p := startProcess(t, t.TempDir())
	ctx := ctxT(t)
	cli := p.client()
	defer cli.Close()
	value := strings.Repeat("v", 64<<10)
	put := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := cli.Put(ctx, fmt.Sprintf("h/%04d", i), value); err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
		}
	}
	put(0, 200) // 12.5 MiB of history

	const conns, perConn = 4, 500
	addr := strings.TrimPrefix(p.clientURL, "http://")
	hostile, stopHostile := context.WithCancel(ctx)
	var ccs []*grpc.ClientConn
	for c := 0; c < conns; c++ {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ccs = append(ccs, cc)
		for i := 0; i < perConn; i++ {
			w, err := pb.NewWatchClient(cc).Watch(hostile)
			if err != nil {
				t.Fatalf("stream %d/%d: %v", c, i, err)
			}
			create := &pb.WatchCreateRequest{Key: []byte("h/"), RangeEnd: []byte("h0")}
			if i%2 == 0 {
				create.StartRevision = 1
			}
			if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: create}}); err != nil {
				t.Fatalf("stream %d/%d: %v", c, i, err)
			}
		}
	}
	defer func() {
		stopHostile()
		for _, cc := range ccs {
			cc.Close()
		}
	}()
	// Copying the history to every stream would take gigabytes: stop at
	// the bound, before the machine runs out.
	const bound = 2 << 30
	checkMemory := func() {
		t.Helper()
		if peak := vmHWM(t, p.cmd.Process.Pid); peak > bound {
			t.Fatalf("node's peak resident size %d MiB, want it bounded below %d MiB", peak>>20, bound>>20)
		}
	}
	waitFor(t, 30*time.Second, "the node to count every watch", func() bool {
		checkMemory()
		return scrapeMetrics(t, p.clientURL)["etcd_debugging_mvcc_watcher_total"] >= conns*perConn
	})

	for i := 200; i < 400; i += 20 {
		put(i, i+20) // 12.5 MiB more in all, live
		checkMemory()
	}
	for i := 0; i < 20; i++ {
		checkMemory()
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Get(short, fmt.Sprintf("h/%04d", i*20), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			t.Fatalf("a read while the streams are stuck: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkMemory()
	t.Logf("node's peak resident size: %d MiB", vmHWM(t, p.cmd.Process.Pid)>>20)

	stopHostile()
	for _, cc := range ccs {
		cc.Close()
	}
	waitFor(t, 30*time.Second, "the streams to be released", func() bool {
		m := scrapeMetrics(t, p.clientURL)
		return m["etcd_debugging_mvcc_watch_stream_total"] == 0 && m["etcd_debugging_mvcc_watcher_total"] == 0
	})
	if _, err := cli.Put(ctx, "h/after", "1"); err != nil {
		t.Fatal(err)
	}
}

// vmHWM is a process's peak resident set size in bytes (/proc/PID/status).
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}
