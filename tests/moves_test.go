package tests

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestMoveReplicas: on four nodes with three replicas per range, a range's
// replica moves from a node to the fourth, then another range's leader's
// replica moves too. Each move leaves the range on three nodes, the old node
// without the replica, the new one serving it from its own copy, and the
// meta range recording the new replicas; every key stays readable through
// every node, and a watch opened before the moves sees every write.
func TestMoveReplicas(t *testing.T) {
	c := testcluster.Start(t, 4)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	start, err := cli.Get(ctx, "mv/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	w := c.Client(c.Nodes[0].ClientURL).Watch(ctx, "mv/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("mv/%02d", i), "a"); err != nil {
			t.Fatal(err)
		}
	}
	splitAt(t, c, c.Nodes[0], "mv/10")
	waitRanges(t, c, 2)
	ids := c.Nodes[0].Server.Testing().RangeIDs()
	if len(ids) != 2 {
		t.Fatalf("node 1 holds ranges %v, want two", ids)
	}
	left, right := ids[0], ids[1]

	// Through a node that is not the range's leader.
	d, err := changeReplicasRetrying(ctx, c.Nodes[1], left, 4, 1)
	if err != nil {
		t.Fatalf("moving range %d from node 1 to node 4: %v", left, err)
	}
	if !slices.Equal(d.ReplicaNodeIds, []uint64{2, 3, 4}) {
		t.Fatalf("range %d's replicas after the move: %v", left, d.ReplicaNodeIds)
	}
	waitHeld(t, c.Nodes[3], left)
	waitHeld(t, c.Nodes[0], right)
	for i := 20; i < 30; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("mv/%02d", i%20), "b"); err != nil {
			t.Fatal(err)
		}
	}
	// The new replica serves reads from its own copy.
	ser, err := c.Client(c.Nodes[3].ClientURL).Get(ctx, "mv/0", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil || len(ser.Kvs) != 10 {
		t.Fatalf("serializable read on the new replica: %v %v", ser, err)
	}

	// The leader's own replica of the other range moves.
	leader := rangeLeader(t, c.Nodes[1], right)
	if _, err := changeReplicasRetrying(ctx, c.Nodes[3], right, 4, leader); err != nil {
		t.Fatalf("moving range %d's leader replica from node %d to node 4: %v", right, leader, err)
	}
	waitHeld(t, c.Nodes[3], left, right)
	for i := 0; i < 20; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("mv/%02d", i), "c"); err != nil {
			t.Fatalf("put after the moves: %v", err)
		}
	}
	for _, n := range c.Nodes {
		got, err := c.Client(n.ClientURL).Get(ctx, "mv/", clientv3.WithPrefix())
		if err != nil || len(got.Kvs) != 20 || string(got.Kvs[19].Value) != "c" {
			t.Fatalf("%s: list after the moves: %v %v", n.Config.Name, got, err)
		}
	}
	waitRecordedRanges(t, c)

	// 20 + 10 + 20 puts, in order, once each.
	seen, last := 0, int64(0)
	for seen < 50 {
		select {
		case resp := <-w:
			if resp.Err() != nil {
				t.Fatalf("watch: %v", resp.Err())
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= last {
					t.Fatalf("watch event at %d after %d", ev.Kv.ModRevision, last)
				}
				last = ev.Kv.ModRevision
				seen++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch saw %d of 50 puts", seen)
		}
	}
}

// waitHeld waits until a node holds exactly the given ranges.
func waitHeld(t *testing.T, n *testcluster.Node, ids ...uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(n.Server.Testing().RangeIDs(), ids) {
		if time.Now().After(deadline) {
			t.Fatalf("%s holds ranges %v, want %v", n.Config.Name, n.Server.Testing().RangeIDs(), ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rangeLeader returns the node leading a range, as a node holding it knows.
func rangeLeader(t *testing.T, n *testcluster.Node, id uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ranges, err := n.Server.Testing().Ranges(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ranges {
			if r.RangeId == id && r.LeaderNodeId != 0 {
				return r.LeaderNodeId
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("range %d has no leader", id)
	return 0
}

// TestLinearizableWithMoves: TestLinearizableManyRanges' load on four nodes
// with three replicas per range while replicas move between nodes (the
// leader's own among them) and ranges split: porcupine checks the history,
// and every multi-range list is exactly the state at its revision.
func TestLinearizableWithMoves(t *testing.T) {
	c := testcluster.Start(t, 4)
	for i, key := range []string{"lin/02", "lin/05", "lin/08", "lin/11", "lin/14"} {
		splitAt(t, c, c.Nodes[i%4], key)
	}
	waitRanges(t, c, 6)
	runLinearizability(t, c, 16, true, func(round int) {
		moveOneReplica(t, c, round)
		if round == 1 {
			splitAt(t, c, c.Nodes[3], "lin/09")
		}
	})
}

// moveOneReplica moves a replica of one of the ranges (chosen by round) to
// the node that does not hold it, from one that does (the range's leader on
// odd rounds), through a node chosen by round.
func moveOneReplica(t *testing.T, c *testcluster.Cluster, round int) {
	t.Helper()
	ctx := ctxT(t)
	ranges, err := c.Nodes[3].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := ranges[(2*round+1)%len(ranges)]
	var to uint64
	for id := uint64(1); id <= uint64(len(c.Nodes)); id++ {
		if !slices.Contains(r.ReplicaNodeIds, id) {
			to = id
		}
	}
	from := r.ReplicaNodeIds[round%len(r.ReplicaNodeIds)]
	if round%2 == 1 {
		from = rangeLeader(t, c.Nodes[to%uint64(len(c.Nodes))], r.RangeId)
		if !slices.Contains(r.ReplicaNodeIds, from) {
			from = r.ReplicaNodeIds[0]
		}
	}
	via := c.Nodes[round%len(c.Nodes)]
	for attempt := 0; ; attempt++ {
		_, err := via.Server.Testing().ChangeReplicas(ctx, r.RangeId, to, from)
		if err == nil {
			t.Logf("moved range %d's replica from node %d to node %d", r.RangeId, from, to)
			return
		}
		if attempt == 4 {
			t.Errorf("moving range %d's replica from node %d to node %d: %v", r.RangeId, from, to, err)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// changeReplicasRetrying moves a range's replica from node remove to node
// add through via, asking again while the answer is Unavailable (the
// leadership of a range losing its leader's replica did not move in time,
// say): a move is asked again until done, as placement asks.
func changeReplicasRetrying(ctx context.Context, via *testcluster.Node, rangeID, add, remove uint64) (*tesserapb.RangeDescriptor, error) {
	for {
		d, err := via.Server.Testing().ChangeReplicas(ctx, rangeID, add, remove)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return d, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
