package tests

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestKill9KeepsAcknowledgedWrites: writers put keys as fast as they can, the
// server is killed with SIGKILL mid-load, restarted on the same data, and every
// write it acknowledged is there.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	dir := t.TempDir()
	p := startProcess(t, dir)
	cli := p.client()
	defer cli.Close()

	var (
		mu    sync.Mutex
		acked = map[string]string{}
		count atomic.Int64
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 100000; i++ {
				k, v := fmt.Sprintf("w%02d/%06d", w, i), fmt.Sprintf("value-%d-%d", w, i)
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := cli.Put(rctx, k, v)
				rcancel()
				if err != nil {
					return // the server is gone; this write is not acknowledged
				}
				mu.Lock()
				acked[k] = v
				mu.Unlock()
				count.Add(1)
			}
		}()
	}
	// Kill once a good number of writes have been acknowledged (bounded wait).
	deadline := time.Now().Add(20 * time.Second)
	for count.Load() < 2000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	cancel()
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged before the kill")
	}

	p.start()
	cli2 := p.client()
	defer cli2.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	get, err := cli2.Get(rctx, "w", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	requireAcked(t, "after kill -9", get.Kvs, acked)
	t.Logf("%d acknowledged writes survived kill -9", len(acked))

	// A graceful stop and restart keeps them too.
	if err := p.stop(); err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, p.stderr)
	}
	p.start()
	cli3 := p.client()
	defer cli3.Close()
	again, err := cli3.Get(rctx, "w", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || again.Count != get.Count {
		t.Fatalf("after graceful restart: count %d, want %d (%v)", again.Count, get.Count, err)
	}
}
