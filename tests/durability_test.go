package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestKill9KeepsAcknowledgedWrites: writers put keys as fast as they can, the
// server is killed with SIGKILL mid-load, restarted on the same data, and every
// write it acknowledged is there.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	killUnderWrites(t, startProcess(t, t.TempDir()), 2000, nil)
}

// TestKill9AcrossSplits: the same while the keyspace is split by hand under
// the writes, and long enough for Dragonboat to snapshot and compact its log
// (more than 10,000 entries): the state machines commit without syncing, so
// every range, the ones split off included, must come back from what its
// store kept plus what the Raft log applies again. (A RangeSM.Sync that made
// nothing durable fails it: checked by hand.) A lease granted before the kill,
// with keys in the home range and in a range given its record, comes back
// with both keys, and its revocation deletes both.
func TestKill9AcrossSplits(t *testing.T) {
	p := startProcess(t, t.TempDir())
	tessera := filepath.Join(binaries(t), "tessera")
	var lease clientv3.LeaseID
	leased := []string{"lease/a", "w13/lease"} // the home range, and the last split's range
	killUnderWrites(t, p, 3000, func() {
		for _, key := range []string{"w04", "w08", "w12"} {
			if out, err := exec.Command(tessera, "ctl", "--endpoints", p.clientURL, "split", key).CombinedOutput(); err != nil {
				t.Errorf("tessera ctl split %s: %v\n%s", key, err, out)
			}
		}
		// A lease with keys in two ranges (the second one given the lease's
		// record) must come back too, and revoke both keys afterwards.
		cli := p.client()
		defer cli.Close()
		ctx := ctxT(t)
		grant, err := cli.Grant(ctx, 600)
		if err != nil {
			t.Errorf("grant: %v", err)
			return
		}
		lease = grant.ID
		for _, k := range leased {
			if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(lease)); err != nil {
				t.Errorf("put %s with a lease: %v", k, err)
			}
		}
	})
	out, err := exec.Command(tessera, "ctl", "--endpoints", p.clientURL, "ranges", "--json").Output()
	if err != nil {
		t.Fatalf("tessera ctl ranges: %v", err)
	}
	var ranges []struct {
		ID uint64 `json:"id"`
	}
	if err := json.Unmarshal(out, &ranges); err != nil {
		t.Fatalf("tessera ctl ranges --json: %v\n%s", err, out)
	}
	if len(ranges) != 4 {
		t.Fatalf("%d ranges after the restarts, want 4", len(ranges))
	}
	cli := p.client()
	defer cli.Close()
	ctx := ctxT(t)
	ttl, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil || fmt.Sprintf("%q", ttl.Keys) != fmt.Sprintf("%q", leased) || ttl.TTL <= 0 {
		t.Fatalf("the lease after the restarts: TTL %d keys %q, %v", ttl.TTL, ttl.Keys, err)
	}
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	for _, k := range leased {
		if get, err := cli.Get(ctx, k); err != nil || get.Count != 0 {
			t.Fatalf("%s after the lease's revocation: %v %v", k, get, err)
		}
	}
}

// killUnderWrites writes from 16 clients until at least acks writes are
// acknowledged (calling during, if not nil, once half of them are), kills the
// server with SIGKILL, restarts it, and checks that every acknowledged write
// is there, then again after a graceful restart.
func killUnderWrites(t *testing.T, p *process, acks int64, during func()) {
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
	deadline := time.Now().Add(30 * time.Second)
	for count.Load() < acks && time.Now().Before(deadline) {
		if during != nil && count.Load() >= acks/2 {
			during()
			during = nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill()
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
