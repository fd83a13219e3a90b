package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/server"
)

// TestRestartSameFlags: a node stopped and started again with the same flags
// has its data, and its revision continues from where it was.
func TestRestartSameFlags(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	put, err := cli.Put(ctx, "persist", "me")
	if err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[0]
	c.StopNode(node)
	c.StartNode(node)
	c.Leader()
	cli2 := c.Client()
	get, err := cli2.Get(ctx, "persist")
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "me" {
		t.Fatalf("after restart: %v %v", get, err)
	}
	next, err := cli2.Put(ctx, "persist", "again")
	if err != nil || next.Header.Revision <= put.Header.Revision {
		t.Fatalf("revision after restart = %d, want above %d (%v)", next.Header.Revision, put.Header.Revision, err)
	}
}

// TestRestartChangedPeerAddress: a node restarted on another peer URL (here a
// one-node cluster, with --initial-cluster naming the new URL too) keeps its
// data, its cluster ID and its name in Raft, and publishes the new URL. As
// etcd does, it ignores a changed --initial-cluster once it has data.
func TestRestartChangedPeerAddress(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	node := c.Nodes[0]
	before, err := c.Client().Put(ctx, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	c.StopNode(node)
	moved := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	node.Config.ListenPeerURLs = []string{moved}
	node.Config.InitialAdvertisePeerURLs = []string{moved}
	node.Config.InitialCluster = []server.Member{{Name: node.Config.Name, PeerURL: moved}}
	c.StartNode(node)
	c.Leader()
	cli := c.Client()
	get, err := cli.Get(ctx, "k")
	if err != nil || len(get.Kvs) != 1 {
		t.Fatalf("after the move: %v %v", get, err)
	}
	if get.Header.ClusterId != before.Header.ClusterId {
		t.Fatalf("cluster ID %x after the move, was %x", get.Header.ClusterId, before.Header.ClusterId)
	}
	waitFor(t, 10*time.Second, "the node to publish its new peer URL", func() bool {
		list, err := cli.MemberList(ctx)
		return err == nil && len(list.Members) == 1 && slices.Equal(list.Members[0].PeerURLs, []string{moved})
	})
}

// TestRestartStepWorkers: Dragonboat records its step worker count in the
// data directory and refuses another. A directory made with Dragonboat's
// default (as every one was before --raft-step-workers existed) still starts
// under the default flag, with its data; an explicit other count is refused
// with an error naming the flag.
func TestRestartStepWorkers(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *server.Config) { cfg.RaftStepWorkers = 16 })
	ctx := ctxT(t)
	if _, err := c.Client().Put(ctx, "made-with", "16 workers"); err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[0]
	c.StopNode(node)
	cfg := node.Config
	cfg.RaftStepWorkers = 3
	if srv, err := server.Start(cfg); err == nil {
		srv.Close()
		t.Fatal("started with another --raft-step-workers")
	} else if !strings.Contains(err.Error(), "--raft-step-workers") {
		t.Fatalf("error does not name the flag: %v", err)
	}
	node.Config.RaftStepWorkers = server.DefaultConfig().RaftStepWorkers
	c.StartNode(node)
	c.Leader()
	get, err := c.Client().Get(ctx, "made-with")
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "16 workers" {
		t.Fatalf("after restart with the default: %v %v", get, err)
	}
}

// TestRestartChangedHostname: data written on a host with another name is
// refused with an error naming the cause, not started empty.
func TestRestartChangedHostname(t *testing.T) {
	c := testcluster.Start(t, 1)
	node := c.Nodes[0]
	c.StopNode(node)
	if err := os.WriteFile(filepath.Join(node.Config.DataDir, "hostname"), []byte("some-other-host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(node.Config)
	if err == nil {
		srv.Close()
		t.Fatal("started on data from another host name")
	}
	if !strings.Contains(err.Error(), `created on host "some-other-host"`) {
		t.Fatalf("error does not name the cause: %v", err)
	}
}

// TestClusterLeaderLossUnderLoad: writers keep writing through every node while
// the leader is stopped and later restarted; every acknowledged write is
// readable afterwards from every node, with revisions that only grow per
// client.
func TestClusterLeaderLossUnderLoad(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for i := range c.Nodes {
		cli := c.Client(c.Endpoints()...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			lastRev := int64(0)
			for j := 0; !stop.Load() && j < 5000; j++ {
				k, v := fmt.Sprintf("load/%d/%05d", i, j), fmt.Sprint(j)
				resp, err := cli.Put(ctx, k, v)
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue // not acknowledged; may or may not be there
				}
				if resp.Header.Revision <= lastRev {
					t.Errorf("client %d: revision went from %d to %d", i, lastRev, resp.Header.Revision)
				}
				lastRev = resp.Header.Revision
				mu.Lock()
				acked[k] = v
				mu.Unlock()
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	leader := c.Leader()
	c.StopNode(leader)
	time.Sleep(2 * time.Second)
	c.StartNode(leader)
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("nothing acknowledged")
	}
	c.Leader()
	for _, node := range c.Nodes {
		cli := c.Client(node.ClientURL)
		var get *clientv3.GetResponse
		var err error
		for range 50 {
			if get, err = cli.Get(ctx, "load/", clientv3.WithPrefix()); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, node.Config.Name, get.Kvs, acked)
	}
	t.Logf("%d acknowledged writes intact on all nodes", len(acked))
}
