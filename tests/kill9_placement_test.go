package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// startProcessCluster starts n tessera processes forming one cluster (each
// with the given extra flags) and waits until each accepts a write.
func startProcessCluster(t *testing.T, n int, flags ...string) []*process {
	t.Helper()
	procs := newProcessCluster(t, n, flags...)
	for _, p := range procs {
		p.launch()
	}
	for _, p := range procs {
		p.waitReady()
	}
	return procs
}

// newProcessCluster is startProcessCluster's cluster, not yet started: a
// test may set each process's binary and environment first. Each process
// is killed when the test ends.
func newProcessCluster(t *testing.T, n int, flags ...string) []*process {
	t.Helper()
	var members []string
	peers := make([]string, n)
	for i := range n {
		peers[i] = fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
		members = append(members, fmt.Sprintf("n%d=%s", i+1, peers[i]))
	}
	root := t.TempDir()
	procs := make([]*process, n)
	// Runs after the processes are killed (cleanups run last first).
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range procs {
				p.logTail()
			}
		}
	})
	for i := range n {
		clientURL := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
		procs[i] = &process{t: t, clientURL: clientURL, args: append([]string{
			"--name", fmt.Sprintf("n%d", i+1),
			"--data-dir", fmt.Sprintf("%s/n%d", root, i+1),
			"--listen-client-urls", clientURL,
			"--listen-peer-urls", peers[i],
			"--initial-cluster", strings.Join(members, ","),
			"--heartbeat-interval", "50", "--election-timeout", "500",
		}, flags...)}
	}
	for _, p := range procs {
		t.Cleanup(p.kill)
	}
	return procs
}

// ctlRanges is `tessera ctl ranges --json` through a process.
func ctlRanges(t *testing.T, p *process) []rangeJSONOut {
	t.Helper()
	out, err := runBinary(t, "tessera", "ctl", "--endpoints", p.clientURL, "ranges", "--json")
	if err != nil {
		t.Fatalf("ctl ranges: %v", err)
	}
	var ranges []rangeJSONOut
	if err := json.Unmarshal([]byte(out), &ranges); err != nil {
		t.Fatalf("ctl ranges --json: %v\n%s", err, out)
	}
	return ranges
}

type rangeJSONOut struct {
	ID       uint64   `json:"id"`
	Replicas []uint64 `json:"replicas"`
	Leader   uint64   `json:"leader"`
}

// waitRanges waits until the ranges `tessera ctl ranges` shows through p
// satisfy ok.
func waitCtlRanges(t *testing.T, p *process, what string, limit time.Duration, ok func([]rangeJSONOut) bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ranges := ctlRanges(t, p)
		if ok(ranges) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: ranges %+v", what, ranges)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestKill9NodeReplaced: four tessera processes, three replicas per range,
// a dead-node timeout of 3 s. The fourth process is killed with SIGKILL
// while a writer runs through the others; writes go on, and once the
// timeout has passed every range is back to three replicas, none on the
// killed node. Restarted with its old command line, the node drops the
// replicas it lost and placement gives it replicas again; every
// acknowledged write reads back through every node.
func TestKill9NodeReplaced(t *testing.T) {
	procs := startProcessCluster(t, 4, "--dead-node-timeout", "3s")
	for _, key := range []string{"k9/2", "k9/4", "k9/6"} {
		if _, err := runBinary(t, "tessera", "ctl", "--endpoints", procs[0].clientURL, "split", key); err != nil {
			t.Fatalf("ctl split %s: %v", key, err)
		}
	}
	holds := func(node uint64) func([]rangeJSONOut) bool {
		return func(rs []rangeJSONOut) bool {
			for _, r := range rs {
				if slices.Contains(r.Replicas, node) {
					return true
				}
			}
			return false
		}
	}
	waitCtlRanges(t, procs[0], "placement to give node 4 replicas", 60*time.Second, holds(4))

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{procs[0].clientURL, procs[1].clientURL, procs[2].clientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	w := startWriter(ctx, cli, "k9")
	time.Sleep(300 * time.Millisecond)
	procs[3].kill()
	waitCtlRanges(t, procs[0], "every range on the three live nodes", 60*time.Second, func(rs []rangeJSONOut) bool {
		for _, r := range rs {
			if len(r.Replicas) != 3 || slices.Contains(r.Replicas, 4) {
				return false
			}
		}
		return len(rs) == 4
	})
	acked, _ := w.stop()
	if len(acked) == 0 {
		t.Fatal("no write succeeded after the kill")
	}

	procs[3].start()
	waitCtlRanges(t, procs[0], "placement to give the restarted node replicas", 60*time.Second, holds(4))
	for _, p := range procs {
		pc := p.client()
		got, err := pc.Get(ctx, "k9/", clientv3.WithPrefix())
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, p.clientURL, got.Kvs, acked)
	}
}

// TestKill9LeaderOfIdleRanges: four tessera processes, three replicas per
// range, a dead-node timeout of 2 s, left idle until their ranges quiesce
// (a quiesced Raft group counts no election ticks). The fourth process,
// leading some ranges, is killed with SIGKILL and no client asks anything:
// the ranges it led still elect new leaders, and every range is back to
// three replicas on the three live nodes.
func TestKill9LeaderOfIdleRanges(t *testing.T) {
	// Short Raft timers: a range idle for ten election timeouts (2 s)
	// quiesces.
	procs := startProcessCluster(t, 4, "--dead-node-timeout", "2s", "--heartbeat-interval", "20", "--election-timeout", "200", "--log-level", "info")
	for _, key := range []string{"kl/2", "kl/4", "kl/6", "kl/8"} {
		if _, err := runBinary(t, "tessera", "ctl", "--endpoints", procs[0].clientURL, "split", key); err != nil {
			t.Fatalf("ctl split %s: %v", key, err)
		}
	}
	// A node knows the leaders of the ranges it holds: ask node 4.
	waitCtlRanges(t, procs[3], "node 4 leading a range, every range with three replicas", 90*time.Second, func(rs []rangeJSONOut) bool {
		led := false
		for _, r := range rs {
			if len(r.Replicas) != 3 {
				return false
			}
			led = led || r.Leader == 4
		}
		return led
	})
	time.Sleep(5 * time.Second)
	procs[3].kill()
	waitCtlRanges(t, procs[0], "every range on the three live nodes", 60*time.Second, func(rs []rangeJSONOut) bool {
		for _, r := range rs {
			if len(r.Replicas) != 3 || slices.Contains(r.Replicas, 4) {
				return false
			}
		}
		return len(rs) == 5
	})
}
