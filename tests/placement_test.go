package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/bench"
	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/server"
)

// placing runs the placement schedulers often, on quick heartbeats, and
// declares a node dead after deadAfter.
func placing(deadAfter time.Duration) func(cfg *serverConfig) {
	return func(cfg *serverConfig) {
		cfg.PlacementInterval = 200 * time.Millisecond
		cfg.Knobs.NodeHeartbeatInterval = 50 * time.Millisecond
		// The tests' ranges are small: a move that hangs (seen now and then
		// adding a replica to a node that just joined, cause not found) is
		// given up and proposed again well within the tests' waits.
		cfg.Knobs.PlacementOpTimeout = 15 * time.Second
		cfg.DeadNodeTimeout = deadAfter
	}
}

// recordedRanges returns the meta range's descriptors as a node reads them.
func recordedRanges(t *testing.T, n *testcluster.Node) []*tesserapb.RangeDescriptor {
	t.Helper()
	ds, err := n.Server.Testing().RecordedRanges(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// replicaCounts counts each node's replicas in the descriptors.
func replicaCounts(ds []*tesserapb.RangeDescriptor) map[uint64]int {
	counts := map[uint64]int{}
	for _, d := range ds {
		for _, id := range d.ReplicaNodeIds {
			counts[id]++
		}
	}
	return counts
}

// waitPlaced waits until the recorded descriptors satisfy ok, and every
// node holds exactly the replicas they name.
func waitPlaced(t *testing.T, c *testcluster.Cluster, what string, limit time.Duration, ok func([]*tesserapb.RangeDescriptor) bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var ds []*tesserapb.RangeDescriptor
		for _, n := range c.Nodes {
			if n.Server != nil {
				ds = recordedRanges(t, n)
				break
			}
		}
		if ok(ds) && heldAsRecorded(c, ds) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: descriptors\n%sheld: %s\nplacement: %s", what, describeDescriptors(ds), describeHeld(c), describePlacement(c))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// heldAsRecorded reports whether every running node holds exactly the
// ranges the descriptors give it.
func heldAsRecorded(c *testcluster.Cluster, ds []*tesserapb.RangeDescriptor) bool {
	for i, n := range c.Nodes {
		if n.Server == nil {
			continue
		}
		var want []uint64
		for _, d := range ds {
			if slices.Contains(d.ReplicaNodeIds, uint64(i+1)) {
				want = append(want, d.RangeId)
			}
		}
		slices.Sort(want)
		if !slices.Equal(n.Server.Testing().RangeIDs(), want) {
			return false
		}
	}
	return true
}

func describeHeld(c *testcluster.Cluster) string {
	var b strings.Builder
	for _, n := range c.Nodes {
		if n.Server != nil {
			fmt.Fprintf(&b, "%s %v; ", n.Config.Name, n.Server.Testing().RangeIDs())
		}
	}
	return b.String()
}

// describePlacement is what placement sees on the meta leader and would
// propose now.
func describePlacement(c *testcluster.Cluster) string {
	for _, n := range c.Nodes {
		if n.Server == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out := n.Server.Testing().Placement(ctx)
		cancel()
		if out != "" {
			return "on " + n.Config.Name + ":\n" + out
		}
	}
	return "no node leads the meta range"
}

// balanced: every range has three replicas, and the nodes' replica counts
// are within one of each other.
func balanced(nodes int) func([]*tesserapb.RangeDescriptor) bool {
	return func(ds []*tesserapb.RangeDescriptor) bool {
		counts := replicaCounts(ds)
		lo, hi := len(ds), 0
		for id := uint64(1); id <= uint64(nodes); id++ {
			lo, hi = min(lo, counts[id]), max(hi, counts[id])
		}
		for _, d := range ds {
			if len(d.ReplicaNodeIds) != 3 {
				return false
			}
		}
		return hi-lo <= 1
	}
}

// TestPlacementFillsNewNode: four nodes, three replicas per range, the
// fourth holding none at first. The placement schedulers move replicas onto
// it while clients read and write through every node; porcupine checks the
// history, every multi-range list is the state at its revision, and the
// replicas end balanced within one per node, each node holding exactly what
// the meta range records.
func TestPlacementFillsNewNode(t *testing.T) {
	c := testcluster.Start(t, 4, placing(time.Minute))
	for i, key := range []string{"lin/02", "lin/04", "lin/06", "lin/08", "lin/10", "lin/12", "lin/14"} {
		splitAt(t, c, c.Nodes[i%3], key)
	}
	runLinearizability(t, c, 16, true, func(int) {})
	waitPlaced(t, c, "replicas balanced over four nodes", 30*time.Second, balanced(4))
	if counts := replicaCounts(recordedRanges(t, c.Nodes[0])); counts[4] < 5 {
		t.Fatalf("the new node holds %d replicas: %v", counts[4], counts)
	}
}

// TestDeadNodeReplaced: four nodes, three replicas per range, balanced. One
// node stops; writes go on through the others; once it has been unheard for
// the dead-node timeout, every range is back to three replicas, all on the
// three live nodes. Restarted, the node drops the replicas it was removed
// from, and placement gives it replicas again; every write reads back.
func TestDeadNodeReplaced(t *testing.T) {
	c := testcluster.Start(t, 4, placing(2*time.Second))
	for i, key := range []string{"dn/2", "dn/4", "dn/6"} {
		splitAt(t, c, c.Nodes[i%3], key)
	}
	waitPlaced(t, c, "replicas balanced", 30*time.Second, balanced(4))

	victim := c.Nodes[3]
	c.StopNode(victim)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := startWriter(ctx, c.Client(c.Nodes[0].ClientURL, c.Nodes[1].ClientURL, c.Nodes[2].ClientURL), "dn")
	waitPlaced(t, c, "every range on the three live nodes", 30*time.Second, func(ds []*tesserapb.RangeDescriptor) bool {
		for _, d := range ds {
			if len(d.ReplicaNodeIds) != 3 || slices.Contains(d.ReplicaNodeIds, 4) {
				return false
			}
		}
		return true
	})
	acked, _ := w.stop()
	if len(acked) == 0 {
		t.Fatal("no write succeeded while the node was down")
	}

	c.StartNode(victim)
	waitPlaced(t, c, "the restarted node balanced in again", 60*time.Second, balanced(4))
	for _, n := range c.Nodes {
		got, err := c.Client(n.ClientURL).Get(ctx, "dn/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, n.Config.Name, got.Kvs, acked)
	}
}

// TestDecommission: four nodes, three replicas per range, balanced. Node 2
// is decommissioned with `tessera ctl decommission n2` while a writer runs:
// no write fails, every replica moves off it, `tessera ctl nodes` shows it
// decommissioned with none, and every write reads back. Decommissioning
// another node then would leave fewer live nodes than --replicas and is
// refused, as are unknown nodes.
func TestDecommission(t *testing.T) {
	c := testcluster.Start(t, 4, placing(time.Minute))
	for i, key := range []string{"dc/2", "dc/4", "dc/6"} {
		splitAt(t, c, c.Nodes[i%3], key)
	}
	waitPlaced(t, c, "replicas balanced", 30*time.Second, balanced(4))
	ctl := func(args ...string) (string, error) {
		return runBinary(t, "tessera", append([]string{"ctl", "--endpoints", c.Nodes[3].ClientURL}, args...)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := startWriter(ctx, c.Client(c.Nodes[0].ClientURL, c.Nodes[2].ClientURL, c.Nodes[3].ClientURL), "dc")
	if out, err := ctl("decommission", "n2"); err != nil || !strings.Contains(out, "node 2 is decommissioning") {
		t.Fatalf("ctl decommission n2: %q %v", out, err)
	}
	waitPlaced(t, c, "node 2 emptied", 60*time.Second, func(ds []*tesserapb.RangeDescriptor) bool {
		for _, d := range ds {
			if len(d.ReplicaNodeIds) != 3 || slices.Contains(d.ReplicaNodeIds, 2) {
				return false
			}
		}
		return true
	})
	acked, failed := w.stop()
	if len(failed) > 0 {
		t.Fatalf("%d writes failed during the decommission, the first: %v", len(failed), failed[0])
	}
	out, err := ctl("nodes")
	if err != nil {
		t.Fatal(err)
	}
	var n2 string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "2 ") {
			n2 = line
		}
	}
	if !strings.Contains(n2, "decommissioned") || !strings.Contains(n2, " n2 ") {
		t.Fatalf("ctl nodes shows node 2 as %q:\n%s", n2, out)
	}
	for _, bad := range []struct{ node, want string }{
		{"n3", "fewer than --replicas (3)"},
		{"n9", `no node named or numbered "n9"`},
	} {
		if out, err := ctl("decommission", bad.node); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ctl decommission %s: %q %v, want an error saying %q", bad.node, out, err, bad.want)
		}
	}
	got, err := c.Client(c.Nodes[3].ClientURL).Get(ctx, "dc/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	requireAcked(t, "n4", got.Kvs, acked)

	// etcdctl member remove: refused for a node holding replicas and for an
	// unknown ID, as etcd refuses; the emptied node goes.
	for _, bad := range []struct{ id, want string }{
		{"3", "still holds"},
		{"63", "etcdserver: member not found"},
	} {
		if out, err := etcdctl(t, c.Nodes[3].ClientURL, "", "member", "remove", bad.id); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("etcdctl member remove %s: %q %v, want an error saying %q", bad.id, out, err, bad.want)
		}
	}
	c.StopNode(c.Nodes[1])
	if out, err := etcdctl(t, c.Nodes[3].ClientURL, "", "member", "remove", "2"); err != nil || !strings.Contains(out, "removed from cluster") {
		t.Fatalf("etcdctl member remove 2: %q %v", out, err)
	}
	members, err := c.Client(c.Nodes[0].ClientURL).MemberList(ctx)
	if err != nil || len(members.Members) != 3 {
		t.Fatalf("member list after removing node 2: %v %v", members, err)
	}
	if _, err := c.Client(c.Nodes[2].ClientURL).Put(ctx, "dc/after", "v"); err != nil {
		t.Fatalf("a put after node 2 left: %v", err)
	}
}

// writer puts keys under a prefix, one after another, until stopped.
type writer struct {
	halt, done chan struct{}
	acked      map[string]string
	failed     []error
}

func startWriter(ctx context.Context, cli *clientv3.Client, prefix string) *writer {
	w := &writer{halt: make(chan struct{}), done: make(chan struct{}), acked: map[string]string{}}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.halt:
				return
			default:
			}
			key, value := fmt.Sprintf("%s/%d/%03d", prefix, i%8, i), fmt.Sprintf("v%d", i)
			opCtx, opCancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := cli.Put(opCtx, key, value)
			opCancel()
			if err != nil {
				w.failed = append(w.failed, err)
			} else {
				w.acked[key] = value
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

// stop ends the writes and returns the acknowledged ones and the failures.
func (w *writer) stop() (map[string]string, []error) {
	close(w.halt)
	<-w.done
	return w.acked, w.failed
}

// TestGrowByJoining: one node, then nodes joining it (--join) one at a time
// up to five, while clients read and write: porcupine checks the history and
// every multi-range list is the state at its revision; the replicas end
// balanced within one per node, three per range, each node holding exactly
// what the meta range records; every node answers `member list` with all
// five.
func TestGrowByJoining(t *testing.T) {
	c := testcluster.Start(t, 1, placing(time.Minute))
	for _, key := range []string{"lin/02", "lin/04", "lin/06", "lin/08", "lin/10", "lin/12", "lin/14"} {
		splitAt(t, c, c.Nodes[0], key)
	}
	runLinearizability(t, c, 16, true, func(round int) {
		c.AddNode()
		if round == 2 {
			c.AddNode()
		}
	})
	waitPlaced(t, c, "replicas balanced over five nodes", 60*time.Second, balanced(5))
	for _, n := range c.Nodes {
		members, err := c.Client(n.ClientURL).MemberList(ctxT(t))
		if err != nil || len(members.Members) != 5 {
			t.Fatalf("%s: member list %v %v", n.Config.Name, members, err)
		}
	}
	// The meta range votes on every node now: the first node can go.
	deadline := time.Now().Add(30 * time.Second)
	for c.Nodes[1].Server.Testing().MetaVoters() != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the meta range has %d voters, want 5", c.Nodes[1].Server.Testing().MetaVoters())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.StopNode(c.Nodes[0])
	cli := c.Client(c.Endpoints()...)
	ctx := ctxT(t)
	// The ranges the first node led elect leaders elsewhere meanwhile; a
	// write may be refused with "no leader" until they have (clientv3 does
	// not retry a Put).
	waitFor(t, 20*time.Second, "a put to every range with the first node stopped", func() bool {
		for i := range 16 {
			if _, err := cli.Put(ctx, fmt.Sprintf("lin/%02d", i), "after"); err != nil {
				return false
			}
		}
		return true
	})
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("lin/%02d", i%16), "after"); err != nil {
			t.Fatalf("a put with the first node stopped: %v", err)
		}
	}
	got, err := cli.Get(ctx, "lin/", clientv3.WithPrefix())
	if err != nil || len(got.Kvs) != 16 {
		t.Fatalf("a list with the first node stopped: %v %v", got, err)
	}
}

// TestJoinedVotersRestart: three nodes, two of them joined with --join and
// made meta voters, all stop and start again with their old configs: every
// node comes back (a joined voter's restart does not replay the entry that
// added it as a non-voter, on which Dragonboat would panic) and serves.
func TestJoinedVotersRestart(t *testing.T) {
	c := testcluster.Start(t, 1, placing(time.Minute))
	c.AddNode()
	c.AddNode()
	deadline := time.Now().Add(30 * time.Second)
	for {
		voters := 0
		for _, n := range c.Nodes[1:] {
			if data, err := os.ReadFile(filepath.Join(n.Config.DataDir, "node.json")); err == nil && strings.Contains(string(data), `"meta_voter":true`) {
				voters++
			}
		}
		if voters == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the joined nodes recorded their meta vote within 30s", voters)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx := ctxT(t)
	if _, err := c.Client().Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		c.StopNode(n)
	}
	for _, n := range c.Nodes {
		c.StartNode(n)
	}
	for _, n := range c.Nodes {
		if _, err := c.Client(n.ClientURL).Put(ctx, "after/"+n.Config.Name, "1"); err != nil {
			t.Fatalf("%s after the restart: %v", n.Config.Name, err)
		}
	}
	if got, err := c.Client(c.Nodes[2].ClientURL).Get(ctx, "before"); err != nil || len(got.Kvs) != 1 {
		t.Fatalf("a write from before the restart: %v %v", got, err)
	}
}

// TestMetaVoterReplaced: six nodes grown from one by --join, so the meta
// range has five voters and one non-voting replica. The first node (a
// voter, started with a one-member --initial-cluster) stops, the meta
// leadership having moved off it. Once it is dead, the meta leader removes
// its voter and promotes the non-voting replica: five voters again, all on
// live nodes. Restarted with its old config, the node is added back to the
// meta range under a new replica ID and serves; restarted once more, it
// comes back with that ID (node.json). Every acknowledged write reads back.
func TestMetaVoterReplaced(t *testing.T) {
	c := testcluster.Start(t, 1, placing(2*time.Second))
	for range 5 {
		c.AddNode()
	}
	first, other := c.Nodes[0], c.Nodes[1]
	waitMeta := func(what string, ok func(voters, learners []uint64) bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			voters, learners := other.Server.Testing().MetaMembers()
			if ok(voters, learners) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: meta voters %v, non-voting %v", what, voters, learners)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMeta("five meta voters", func(voters, learners []uint64) bool {
		return len(voters) == 5 && len(learners) == 1 && slices.Contains(voters, 1)
	})
	deadline := time.Now().Add(30 * time.Second)
	for other.Server.Testing().MetaLeader() == 1 {
		_ = first.Server.Testing().TransferMetaLeadership(2)
		if time.Now().After(deadline) {
			t.Fatal("the meta leadership did not move off node 1")
		}
		time.Sleep(200 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var rest []string
	for _, n := range c.Nodes[1:] {
		rest = append(rest, n.ClientURL)
	}
	w := startWriter(ctx, c.Client(rest...), "mv")
	c.StopNode(first)
	waitMeta("five meta voters on live nodes", func(voters, learners []uint64) bool {
		return len(voters) == 5 && !slices.Contains(voters, 1) && !slices.Contains(learners, 1)
	})

	c.StartNode(first)
	waitMeta("node 1 added to the meta range again", func(voters, learners []uint64) bool {
		return slices.Contains(learners, 1) || slices.Contains(voters, 1)
	})
	serves := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			id := first.Server.Testing().MetaReplicaID()
			_, err := c.Client(first.ClientURL).Put(ctx, "mv/first", what)
			if err == nil && replicaid.NodeOf(id) == 1 && replicaid.Incarnation(id) == 1 && first.Server.Testing().MetaLeader() != 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node 1 %s: meta replica %#x, leader %d, put: %v", what, id, first.Server.Testing().MetaLeader(), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	serves("restarted")
	c.StopNode(first)
	c.StartNode(first)
	serves("restarted again")

	acked, _ := w.stop()
	if len(acked) == 0 {
		t.Fatal("no write succeeded while node 1 was down")
	}
	for _, n := range c.Nodes {
		got, err := c.Client(n.ClientURL).Get(ctx, "mv/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		requireAcked(t, n.Config.Name, got.Kvs, acked)
	}
}

// TestJoinRefusals: a --join whose URL answers but is no Tessera member, a
// --name a member already has, and a data directory of an --initial-cluster
// member are refused, naming the cause, and start nothing; a node that
// joined restarts from its data directory with the same command.
func TestJoinRefusals(t *testing.T) {
	c := testcluster.Start(t, 1)
	joiner := func(name string, join ...string) serverConfig {
		cfg := c.Nodes[0].Config
		peer := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
		client := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
		cfg.Name, cfg.DataDir, cfg.Join = name, t.TempDir()+"/"+name, join
		cfg.ListenPeerURLs, cfg.InitialAdvertisePeerURLs = []string{peer}, []string{peer}
		cfg.ListenClientURLs, cfg.AdvertiseClientURLs = []string{client}, []string{client}
		cfg.InitialCluster = []server.Member{{Name: name, PeerURL: peer}}
		return cfg
	}
	null, err := bench.StartNullServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer null.Stop()
	for _, bad := range []struct {
		cfg  serverConfig
		want string
	}{
		{joiner("x", "http://"+null.Addr()), "is not a member of a Tessera cluster"},
		{joiner("n1", c.Nodes[0].ClientURL), `a node named "n1" is already a member`},
	} {
		if srv, err := server.Start(bad.cfg); err == nil || !strings.Contains(err.Error(), bad.want) {
			if srv != nil {
				srv.Close()
			}
			t.Errorf("joining as %s through %v: %v, want an error saying %q", bad.cfg.Name, bad.cfg.Join, err, bad.want)
		}
	}
	member := c.Nodes[0].Config
	member.Join = []string{c.Nodes[0].ClientURL}
	member.InitialCluster = member.InitialCluster[:1]
	if srv, err := server.Start(member); err == nil || !strings.Contains(err.Error(), "belongs to a member of an --initial-cluster") {
		if srv != nil {
			srv.Close()
		}
		t.Errorf("--join with a member's data directory: %v", err)
	}

	n2 := c.AddNode()
	if _, err := c.Client(n2.ClientURL).Put(ctxT(t), "j/1", "v"); err != nil {
		t.Fatal(err)
	}
	c.StopNode(n2)
	c.StartNode(n2) // the same command, --join included
	got, err := c.Client(n2.ClientURL).Get(ctxT(t), "j/1")
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("after the joined node restarted: %v %v", got, err)
	}
	members, err := c.Client(c.Nodes[0].ClientURL).MemberList(ctxT(t))
	if err != nil || len(members.Members) != 2 {
		t.Fatalf("member list after the restart: %v %v", members, err)
	}
}

// TestMemberAdd: etcd's MemberAdd registers a node that has not started:
// member list shows it with its peer URL and no name, as etcd shows an
// unstarted member; adding the same peer URL again is refused with etcd's
// error, and so is a learner. A node started with --join and that peer URL
// joins under the ID MemberAdd gave it. An added node that never started
// is removed with MemberRemove.
func TestMemberAdd(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client(c.Endpoints()...)
	ctx := ctxT(t)
	peer := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	added, err := cli.MemberAdd(ctx, []string{peer})
	if err != nil {
		t.Fatal(err)
	}
	id := added.Member.ID
	member := func(id uint64) *etcdserverpb.Member {
		t.Helper()
		return memberWhere(t, cli, func(m *etcdserverpb.Member) bool { return m.ID == id })
	}
	if m := member(id); m == nil || m.Name != "" || len(m.ClientURLs) != 0 || !slices.Equal(m.PeerURLs, []string{peer}) {
		t.Fatalf("member list shows the added node as %v", m)
	}
	if _, err := cli.MemberAdd(ctx, []string{peer}); !errors.Is(err, rpctypes.ErrPeerURLExist) {
		t.Fatalf("adding a peer URL twice: %v, want %v", err, rpctypes.ErrPeerURLExist)
	}
	if _, err := cli.MemberAddAsLearner(ctx, []string{fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("adding a learner: %v", err)
	}

	n := c.AddNodeAt(peer)
	list, err := c.Client(n.ClientURL).MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if list.Header.MemberId != id {
		t.Fatalf("the node started with the added peer URL is member %d, want %d", list.Header.MemberId, id)
	}
	if m := member(id); m == nil || m.Name != n.Config.Name || len(m.ClientURLs) == 0 {
		t.Fatalf("after joining, member list shows the node as %v", m)
	}

	other, err := cli.MemberAdd(ctx, []string{fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.MemberRemove(ctx, other.Member.ID); err != nil {
		t.Fatalf("removing an added node that never started: %v", err)
	}
	if m := member(other.Member.ID); m != nil {
		t.Fatalf("the removed node is still listed: %v", m)
	}
}

// TestInitialClusterStateExisting: etcd's way of growing a cluster works
// unchanged. MemberAdd gives the new member's peer URL an ID; the member
// then starts with every member in --initial-cluster and
// --initial-cluster-state existing (no --join), joins through the others'
// peer URLs under that ID, serves, and restarts with the same flags as the
// same node. A founding member restarted with "existing" is unaffected.
func TestInitialClusterStateExisting(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	if _, err := cli.Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	added, err := cli.MemberAdd(ctx, []string{peer})
	if err != nil {
		t.Fatal(err)
	}
	first := c.Nodes[0]
	self := server.Member{Name: "n2", PeerURL: peer}
	n2 := &testcluster.Node{Config: first.Config}
	n2.Config.Name = self.Name
	n2.Config.DataDir = filepath.Join(t.TempDir(), "n2")
	n2.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))
	n2.Config.ListenClientURLs = []string{n2.ClientURL}
	n2.Config.AdvertiseClientURLs = []string{n2.ClientURL}
	n2.Config.ListenPeerURLs = []string{peer}
	n2.Config.InitialAdvertisePeerURLs = []string{peer}
	n2.Config.InitialCluster = append(slices.Clone(first.Config.InitialCluster), self)
	n2.Config.InitialClusterState = "existing"
	c.StartNode(n2)
	c.Nodes = append(c.Nodes, n2)
	t.Cleanup(func() { c.StopNode(n2) })

	check := func(when string) {
		t.Helper()
		cli2 := c.Client(n2.ClientURL)
		list, err := cli2.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if list.Header.MemberId != added.Member.ID {
			t.Fatalf("%s: the node started with the added peer URL is member %x, want %x", when, list.Header.MemberId, added.Member.ID)
		}
		if len(list.Members) != 2 {
			t.Fatalf("%s: member list %v, want 2 members", when, list.Members)
		}
		if _, err := cli2.Put(ctx, "from-n2", when); err != nil {
			t.Fatalf("%s: put through n2: %v", when, err)
		}
		get, err := cli2.Get(ctx, "before")
		if err != nil || len(get.Kvs) != 1 {
			t.Fatalf("%s: read through n2: %v %v", when, get, err)
		}
	}
	check("joined")
	c.StopNode(n2)
	c.StartNode(n2)
	check("restarted")

	c.StopNode(first)
	first.Config.InitialClusterState = "existing"
	c.StartNode(first)
	if _, err := c.Client(first.ClientURL).Put(ctx, "after", "1"); err != nil {
		t.Fatalf("the founding member restarted with existing: %v", err)
	}
}

// A node's peer URL changes as an etcd member's does: `member update`, then
// the node restarted listening on the new URL. The others reach it there
// (Raft and node-to-node calls), and it keeps its ID and its replicas.
// MemberPromote answers as etcd does for members that are not learners.
func TestMemberUpdate(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	if _, err := cli.Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	n3 := c.Nodes[2]
	m3 := memberWhere(t, cli, func(m *etcdserverpb.Member) bool { return m.Name == "n3" })
	if m3 == nil {
		t.Fatal("member list has no n3")
	}
	id3 := m3.ID
	newPeer := fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))

	for _, tc := range []struct {
		what string
		call func() error
		want error
	}{
		{"update of an unknown member", func() error { _, err := cli.MemberUpdate(ctx, 0xbad, []string{newPeer}); return err }, rpctypes.ErrMemberNotFound},
		{"update to another member's peer URL", func() error {
			_, err := cli.MemberUpdate(ctx, id3, c.Nodes[0].Config.InitialAdvertisePeerURLs)
			return err
		}, rpctypes.ErrPeerURLExist},
		{"promote of a voting member", func() error { _, err := cli.MemberPromote(ctx, id3); return err }, rpctypes.ErrMemberNotLearner},
		{"promote of an unknown member", func() error { _, err := cli.MemberPromote(ctx, 0xbad); return err }, rpctypes.ErrMemberNotFound},
	} {
		if err := tc.call(); !errors.Is(rpctypes.Error(err), tc.want) {
			t.Fatalf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}

	resp, err := cli.MemberUpdate(ctx, id3, []string{newPeer})
	if err != nil {
		t.Fatal(err)
	}
	peerOf := func(members []*etcdserverpb.Member) []string {
		for _, m := range members {
			if m.ID == id3 {
				return m.PeerURLs
			}
		}
		return nil
	}
	if got := peerOf(resp.Members); !slices.Equal(got, []string{newPeer}) {
		t.Fatalf("member update answered n3's peer URLs %v, want %s", got, newPeer)
	}

	c.StopNode(n3)
	n3.Config.ListenPeerURLs = []string{newPeer}
	n3.Config.InitialAdvertisePeerURLs = []string{newPeer}
	c.StartNode(n3)

	// Writes through the other nodes reach n3's replicas only over
	// connections they open to its new address.
	cli1 := c.Client(c.Nodes[0].ClientURL)
	cli3 := c.Client(n3.ClientURL)
	for i := range 20 {
		if _, err := cli1.Put(ctx, fmt.Sprintf("after/%02d", i), "v"); err != nil {
			t.Fatalf("put %d after n3 moved: %v", i, err)
		}
	}
	waitFor(t, 20*time.Second, "n3 to hold the writes made after it moved", func() bool {
		get, err := cli3.Get(ctx, "after/", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithCountOnly())
		return err == nil && get.Count == 20
	})
	if _, err := cli3.Put(ctx, "from-n3", "v"); err != nil {
		t.Fatalf("put through n3 after it moved: %v", err)
	}
	list, err := cli3.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if list.Header.MemberId != id3 || !slices.Equal(peerOf(list.Members), []string{newPeer}) {
		t.Fatalf("after the restart n3 is member %x with peer URLs %v, want %x at %s", list.Header.MemberId, peerOf(list.Members), id3, newPeer)
	}
	b, err := os.ReadFile(filepath.Join(n3.Config.DataDir, "member.json"))
	if old := strings.TrimPrefix(n3.Config.InitialCluster[2].PeerURL, "http://"); err != nil || !strings.Contains(string(b), `"raft_address":"`+old+`"`) {
		t.Fatalf("n3's record %s (%v) does not keep its first peer address %s as its Raft address", b, err, old)
	}
}

// memberWhere returns the first member of cli's member list that match
// accepts, nil when none does.
func memberWhere(t *testing.T, cli *clientv3.Client, match func(*etcdserverpb.Member) bool) *etcdserverpb.Member {
	t.Helper()
	list, err := cli.MemberList(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list.Members {
		if match(m) {
			return m
		}
	}
	return nil
}

// TestMembershipCallWhileMetaLeaderStops: a Cluster call made through
// another node right after the meta leader's node stops waits for the new
// meta leader and is answered there, instead of failing with the stopped
// node's dial error.
func TestMembershipCallWhileMetaLeaderStops(t *testing.T) {
	c := testcluster.Start(t, 3)
	leader := c.Nodes[c.Nodes[0].Server.Testing().MetaLeader()-1]
	var other *testcluster.Node
	for _, n := range c.Nodes {
		if n != leader {
			other = n
		}
	}
	cli := c.Client(other.ClientURL)
	id := memberWhere(t, cli, func(m *etcdserverpb.Member) bool { return m.Name == other.Config.Name }).ID
	c.StopNode(leader)
	if _, err := cli.MemberPromote(ctxT(t), id); !errors.Is(rpctypes.Error(err), rpctypes.ErrMemberNotLearner) {
		t.Fatalf("member promote right after the meta leader's node stopped: %v, want %v", err, rpctypes.ErrMemberNotLearner)
	}
}
