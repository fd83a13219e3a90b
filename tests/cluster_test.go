package tests

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
