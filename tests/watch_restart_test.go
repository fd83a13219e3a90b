package tests

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestWatchAcrossNodeRestart: a client watching through one member keeps
// its watch across that member's restart. clientv3 resumes it from the
// revision after the last event it got; the restarted member (its hub new,
// its ranges reopened) serves the writes made meanwhile through the other
// members from history, then the live ones: every key exactly once, in
// revision order.
func TestWatchAcrossNodeRestart(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	splitAt(t, c, c.Nodes[0], "wr/5")
	writer := c.Client(c.Nodes[1].ClientURL, c.Nodes[2].ClientURL)
	watcher := c.Client(c.Nodes[0].ClientURL)
	wch := watcher.Watch(ctx, "wr/", clientv3.WithPrefix())
	const perPhase = 30
	put := func(phase int) {
		for i := range perPhase {
			if _, err := writer.Put(ctx, fmt.Sprintf("wr/%d/%02d", (i%2)*5, phase*perPhase+i), "v"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []string
	var lastRev int64
	recv := func(n int) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for len(got) < n {
			select {
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					t.Fatalf("watch ended after %d events: %v", len(got), wr.Err())
				}
				for _, ev := range wr.Events {
					if ev.Kv.ModRevision <= lastRev {
						t.Fatalf("event %s at %d after revision %d", ev.Kv.Key, ev.Kv.ModRevision, lastRev)
					}
					lastRev = ev.Kv.ModRevision
					got = append(got, string(ev.Kv.Key))
				}
			case <-deadline:
				t.Fatalf("%d of %d events after 20s", len(got), n)
			}
		}
	}
	put(0)
	recv(perPhase)
	c.StopNode(c.Nodes[0])
	put(1) // made while the watching member is down
	c.StartNode(c.Nodes[0])
	put(2)
	recv(3 * perPhase)
	if len(got) != 3*perPhase {
		t.Fatalf("%d events, want %d", len(got), 3*perPhase)
	}
	seen := map[string]bool{}
	for _, k := range got {
		if seen[k] {
			t.Fatalf("key %s delivered twice", k)
		}
		seen[k] = true
	}
}
