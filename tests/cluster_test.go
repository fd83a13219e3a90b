package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestClusterSurvivesLeaderLoss: on a 3-node cluster, writes through every
// node succeed (followers forward to the leader); after the leader stops, the
// other two keep serving and nothing acknowledged is lost.
func TestClusterSurvivesLeaderLoss(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	leader := c.Leader()

	acked := map[string]string{}
	for i, node := range c.Nodes {
		cli := c.Client(node.ClientURL)
		for j := range 20 {
			k, v := fmt.Sprintf("k/%d/%d", i, j), fmt.Sprintf("v%d", j)
			if _, err := cli.Put(ctx, k, v); err != nil {
				t.Fatalf("put through %s: %v", node.Config.Name, err)
			}
			acked[k] = v
		}
	}
	// A lease granted through a follower lives on the leader.
	follower := c.Nodes[0]
	if follower == leader {
		follower = c.Nodes[1]
	}
	fcli := c.Client(follower.ClientURL)
	lease, err := fcli.Grant(ctx, 30)
	if err != nil {
		t.Fatalf("lease grant through a follower: %v", err)
	}
	if _, err := fcli.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Fatalf("keep-alive through a follower: %v", err)
	}
	members, err := fcli.MemberList(ctx)
	if err != nil || len(members.Members) != 3 {
		t.Fatalf("member list: %+v %v", members, err)
	}

	c.StopNode(leader)
	var survivors []string
	for _, n := range c.Nodes {
		if n != leader {
			survivors = append(survivors, n.ClientURL)
		}
	}
	cli := c.Client(survivors...)
	// The remaining two elect a leader and serve writes.
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := cli.Put(ctx, "after", "failover")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write accepted after leader loss: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	acked["after"] = "failover"
	for _, url := range survivors {
		get, err := c.Client(url).Get(ctx, "", clientv3.WithFromKey())
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, url, get.Kvs, acked)
	}
}

// TestReadsWhileRangeLeaderDies: linearizable reads through a follower
// whose range leader's node has just stopped are answered once the others
// elect a leader, or refused with etcd's "no leader"; never with the error
// of a peer connection the client knows nothing of. Raw gRPC, so that
// clientv3's retries do not hide what the node answers.
func TestReadsWhileRangeLeaderDies(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client(c.Nodes[0].ClientURL)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rangeID uint64
	for _, r := range ranges {
		if string(r.StartKey) <= "k" && (len(r.EndKey) == 0 || "k" < string(r.EndKey)) {
			rangeID = r.RangeId
		}
	}
	// Node 3 leads k's range, node 1 the meta range, so the revision
	// oracle stays up; node 2 reads.
	victim, reader := c.Nodes[2], c.Nodes[1]
	waitFor(t, 20*time.Second, "node 3 to lead k's range and node 1 the meta range", func() bool {
		n := c.Nodes[0].Server.Testing()
		_ = n.TransferRangeLeadership(rangeID, 3)
		_ = n.TransferMetaLeadership(1)
		return rangeLeader(t, c.Nodes[0], rangeID) == 3 && n.MetaLeader() == 1
	})
	cc, err := grpc.NewClient(strings.TrimPrefix(reader.ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	kv := pb.NewKVClient(cc)
	if _, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	c.StopNode(victim)
	served, refused := 0, 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := kv.Range(short, &pb.RangeRequest{Key: []byte("k")})
		cancel()
		switch {
		case err == nil && len(resp.Kvs) == 1:
			served++
		case err == nil:
			t.Fatalf("read k: %v", resp)
		case err.Error() == rpctypes.ErrGRPCNoLeader.Error():
			refused++
		default:
			t.Fatalf("read through node 2 after node 3 stopped (%d served, %d refused before): %v", served, refused, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d reads served, %d refused with %q", served, refused, rpctypes.ErrGRPCNoLeader.Error())
	if served == 0 {
		t.Fatal("no read served after the leader's node stopped")
	}
}
