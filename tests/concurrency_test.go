package tests

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/v3electionpb"
	"github.com/tesserakv/tessera/proto/v3lockpb"
)

// TestMutexAndElectionUnderLeaderKills runs clientv3's concurrency
// package against a three-node cluster whose lock and election keys fall
// in several ranges, while the node leading the meta range is stopped and
// started again over and over: mutex holders and election leaders never
// overlap (each increments a count in the test when it wins and decrements
// it before it lets go, and each proves its ownership with a guarded
// write), and both keep making progress.
func TestMutexAndElectionUnderLeaderKills(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	// Lease IDs, which name the keys, spread over these ranges.
	for _, key := range []string{"lock/4", "lock/8", "lock/c", "elect/8"} {
		if err := c.Nodes[0].Server.SplitRange(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	waitRanges(t, c, 5)
	const run = 8 * time.Second
	deadline := time.Now().Add(run)
	var holders, leaders atomic.Int32
	var locked, elected, overlaps, lostOwnership atomic.Int64
	var wg sync.WaitGroup
	worker := func(i int, body func(s *concurrency.Session, cli *clientv3.Client) error) {
		defer wg.Done()
		cli := c.Client()
		for time.Now().Before(deadline) {
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			for time.Now().Before(deadline) {
				if err := body(s, cli); err != nil {
					time.Sleep(20 * time.Millisecond)
				}
				select {
				case <-s.Done():
				default:
					continue
				}
				break
			}
			s.Close()
		}
	}
	for i := range 4 {
		wg.Add(1)
		go worker(i, func(s *concurrency.Session, cli *clientv3.Client) error {
			m := concurrency.NewMutex(s, "lock/")
			lctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := m.Lock(lctx); err != nil {
				return err
			}
			if holders.Add(1) > 1 {
				overlaps.Add(1)
			}
			locked.Add(1)
			resp, err := cli.Txn(lctx).If(m.IsOwner()).Then(clientv3.OpPut("lock-owner", m.Key())).Commit()
			if err == nil && !resp.Succeeded {
				lostOwnership.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
			holders.Add(-1)
			return m.Unlock(lctx)
		})
	}
	for i := range 3 {
		wg.Add(1)
		go worker(i, func(s *concurrency.Session, cli *clientv3.Client) error {
			e := concurrency.NewElection(s, "elect/")
			ectx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := e.Campaign(ectx, fmt.Sprintf("candidate-%d", i)); err != nil {
				return err
			}
			if leaders.Add(1) > 1 {
				overlaps.Add(1)
			}
			elected.Add(1)
			if err := e.Proclaim(ectx, fmt.Sprintf("leader-%d", i)); err != nil && err != concurrency.ErrElectionNotLeader {
				t.Logf("proclaim: %v", err)
			}
			time.Sleep(5 * time.Millisecond)
			leaders.Add(-1)
			return e.Resign(ectx)
		})
	}
	kills := 0
	for time.Now().Add(2 * time.Second).Before(deadline) {
		time.Sleep(1500 * time.Millisecond)
		leader := c.Leader()
		c.StopNode(leader)
		time.Sleep(700 * time.Millisecond)
		c.StartNode(leader)
		kills++
	}
	wg.Wait()
	t.Logf("%d leader kills; %d locks, %d elections", kills, locked.Load(), elected.Load())
	if n := overlaps.Load(); n > 0 {
		t.Fatalf("%d times two holders of the mutex or two election leaders at once", n)
	}
	if n := lostOwnership.Load(); n > 0 {
		t.Fatalf("%d times a mutex holder's guarded write found it no longer the owner", n)
	}
	if locked.Load() < 10 || elected.Load() < 10 {
		t.Fatalf("too little progress: %d locks, %d elections in %s", locked.Load(), elected.Load(), run)
	}
}

// TestElectionAndLockServices drives etcd's server-side Election and Lock
// services: a second Lock of a name waits for the first holder's Unlock;
// Campaign, Leader, Proclaim, Observe and Resign follow one leader.
func TestElectionAndLockServices(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	conn, err := grpc.NewClient(c.Endpoints()[0][len("http://"):], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	lease := func() int64 {
		l, err := cli.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		return int64(l.ID)
	}

	locks := v3lockpb.NewLockClient(conn)
	first, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("svc-lock"), Lease: lease()})
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan *v3lockpb.LockResponse, 1)
	go func() {
		resp, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("svc-lock"), Lease: lease()})
		if err != nil {
			t.Error(err)
		}
		second <- resp
	}()
	select {
	case <-second:
		t.Fatal("a second Lock returned while the first holder held the lock")
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: first.Key}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-second:
		if resp == nil || resp.Header.Revision <= first.Header.Revision {
			t.Fatalf("second holder: %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second Lock did not return after the first Unlock")
	}

	el := v3electionpb.NewElectionClient(conn)
	if _, err := el.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("svc-elect")}); err == nil {
		t.Fatal("Leader of an election nobody campaigned in answered")
	}
	observe, err := el.Observe(ctx, &v3electionpb.LeaderRequest{Name: []byte("svc-elect")})
	if err != nil {
		t.Fatal(err)
	}
	won, err := el.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("svc-elect"), Lease: lease(), Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := el.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: won.Leader, Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	leader, err := el.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("svc-elect")})
	if err != nil || string(leader.Kv.Value) != "b" || string(leader.Kv.Key) != string(won.Leader.Key) {
		t.Fatalf("leader %v, %v; want %s=b", leader, err, won.Leader.Key)
	}
	for _, want := range []string{"a", "b"} {
		resp, err := observe.Recv()
		if err != nil || string(resp.Kv.Value) != want {
			t.Fatalf("observed %v, %v; want %s", resp, err, want)
		}
	}
	if _, err := el.Resign(ctx, &v3electionpb.ResignRequest{Leader: won.Leader}); err != nil {
		t.Fatal(err)
	}
	if _, err := el.Proclaim(ctx, &v3electionpb.ProclaimRequest{}); err == nil {
		t.Fatal("Proclaim without a leader key answered")
	}
}
