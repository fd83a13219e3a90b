package tests

import (
	"testing"
	"time"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestGrowUnderLoad: a cluster started as one node grows to three and then
// to five by --join while writers, multi-range lists and watches run; the
// placement schedulers spread the replicas and leaders over the new nodes
// as they come. Porcupine checks the history of the single-key operations
// and every list against the acknowledged writes, the watch-guarantee
// checker checks every watch (some opened on the new nodes, following
// ranges they hold no replica of, while those ranges split and move), and
// at the end the replicas and the leaders are within one per node.
func TestGrowUnderLoad(t *testing.T) {
	c := testcluster.Start(t, 1, watchProgressOften, placing(time.Minute))
	finish := startLinearizability(t, c, 16, true)
	runWatchGuarantees(t, c, []int{0, 1, 2}, func(round int) {
		if round == 0 || round == 2 {
			c.AddNode()
			c.AddNode()
			t.Logf("grew to %d nodes", len(c.Nodes))
		}
	})
	finish()
	waitPlaced(t, c, "replicas balanced over five nodes", 2*time.Minute, balanced(5))
	deadline := time.Now().Add(30 * time.Second)
	for led := leadersAcross(t, c); !withinOne(led, len(c.Nodes)); led = leadersAcross(t, c) {
		if time.Now().After(deadline) {
			t.Fatalf("leaders not within one per node after 30s: %v", led)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("replicas per node %v", replicaCounts(recordedRanges(t, c.Nodes[0])))
}

// withinOne reports whether the counts of nodes 1..nodes differ by at most
// one.
func withinOne(counts map[uint64]int, nodes int) bool {
	lo, hi := counts[1], counts[1]
	for id := uint64(2); id <= uint64(nodes); id++ {
		lo, hi = min(lo, counts[id]), max(hi, counts[id])
	}
	return hi-lo <= 1
}

// leadersAcross counts the ranges each node leads, as the nodes holding
// each range see it (a node knows the leaders of its own replicas only).
func leadersAcross(t *testing.T, c *testcluster.Cluster) map[uint64]int {
	t.Helper()
	leader := map[uint64]uint64{}
	for _, n := range c.Nodes {
		if n.Server == nil {
			continue
		}
		ranges, err := n.Server.Testing().Ranges(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ranges {
			if r.LeaderNodeId != 0 && leader[r.RangeId] == 0 {
				leader[r.RangeId] = r.LeaderNodeId
			}
		}
	}
	led := map[uint64]int{}
	for _, id := range leader {
		led[id]++
	}
	return led
}
