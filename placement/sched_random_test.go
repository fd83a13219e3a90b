package placement

import (
	"flag"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

var replaySeed = flag.Uint64("sched-seed", 0, "run TestScheduleRandom on this seed alone, logging each pass")

// TestScheduleRandom simulates random clusters to a fixed point. On the way
// sim checks every op against its snapshot and every membership step for
// quorum; ops complete after random delays, so in-flight accounting is
// exercised too. Each cluster must settle within a bound on passes and ops
// (no oscillation), give the same ops whatever the order of its input, and
// never touch a range that lost quorum. Even seeds make clean clusters
// (live, dead and decommissioning nodes, unlimited disks, no load) that
// must end fully replicated on live nodes and balanced within one replica
// and one leadership. Seeds are fixed; a failure names its seed, and
// -sched-seed replays it with a trace.
func TestScheduleRandom(t *testing.T) {
	first, last := uint64(1), uint64(1000)
	if testing.Short() {
		last = 100
	}
	if *replaySeed != 0 {
		first, last = *replaySeed, *replaySeed
	}
	budget := time.Now().Add(30 * time.Second)
	for seed := first; seed <= last; seed++ {
		if time.Now().After(budget) {
			t.Logf("time budget spent after %d clusters", seed-1)
			return
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		clean := seed%2 == 0
		c := randomCluster(rng, clean)
		checkOrderIndependent(t, seed, rng, &c)

		lost := LostQuorum(&c)
		s := &sim{c: c, rng: rng, limits: Limits{PerNode: 1 + rng.IntN(3), Total: 4 + rng.IntN(17)}}
		// An op completes within three passes, and while nothing is in
		// flight a pass either proposes an op or finds the fixed point.
		maxOps := 6*len(c.Ranges) + 20
		maxPasses := 3*maxOps + 10
		var trace func(int, []Op)
		if *replaySeed != 0 {
			t.Logf("limits %+v\n%s%s", s.limits, renderNodes(&c), renderRanges(&c))
			trace = func(pass int, ops []Op) { t.Logf("pass %d: %v", pass, ops) }
		}
		passes, ops, err := s.run(maxPasses, trace)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if ops > maxOps {
			t.Fatalf("seed %d: %d ops for %d ranges: thrashing", seed, ops, len(c.Ranges))
		}
		if now := LostQuorum(&s.c); !slices.Equal(now, lost) {
			t.Fatalf("seed %d: ranges without quorum were %v, now %v", seed, lost, now)
		}
		if clean && len(lost) == 0 {
			checkSettled(t, seed, &s.c)
		}
		t.Logf("seed %d: %d nodes, %d ranges: %d ops in %d passes", seed, len(c.Nodes), len(c.Ranges), ops, passes)
	}
}

func randomCluster(rng *rand.Rand, clean bool) Cluster {
	c := Cluster{Replicas: 3}
	if !clean && rng.IntN(4) == 0 {
		c.Replicas = 1 + rng.IntN(5)
	}
	numNodes := 3 + rng.IntN(7)
	for id := uint64(1); id <= uint64(numNodes); id++ {
		n := Node{ID: id}
		switch {
		case clean && id > 3 && rng.IntN(4) == 0:
			n.State = []NodeState{NodeDead, NodeDecommissioning}[rng.IntN(2)]
		case !clean && rng.IntN(3) == 0:
			n.State = NodeState(1 + rng.IntN(3))
		}
		c.Nodes = append(c.Nodes, n)
	}
	numRanges := 1 + rng.IntN(60)
	for id := uint64(1); id <= uint64(numRanges); id++ {
		c.Ranges = append(c.Ranges, randomRange(rng, id, numNodes, clean))
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		for _, r := range c.Ranges {
			if slices.Contains(replicaNodes(&r), n.ID) {
				n.DiskUsedBytes += r.SizeBytes
			}
		}
		if !clean && rng.IntN(2) == 0 {
			n.DiskQuotaBytes = n.DiskUsedBytes + rng.Int64N(2000)
		}
	}
	return c
}

// randomRange places a range's replicas on the lower-numbered nodes more
// often, so that clusters start unbalanced.
func randomRange(rng *rand.Rand, id uint64, numNodes int, clean bool) RangeInfo {
	r := RangeInfo{ID: id, SizeBytes: 1 + rng.Int64N(100)}
	numVoters := min([]int{1, 2, 3, 3, 3, 3, 4, 5}[rng.IntN(8)], numNodes)
	spread := numVoters + rng.IntN(numNodes-numVoters+1)
	for i, node := range rng.Perm(spread) {
		role := Voter
		if i >= numVoters {
			if clean || rng.IntN(10) != 0 {
				break
			}
			role = NonVoter
		}
		r.Replicas = append(r.Replicas, Replica{NodeID: uint64(node + 1), ReplicaID: id*10 + uint64(i), Role: role})
	}
	if rng.IntN(10) != 0 {
		r.Leader = r.Replicas[rng.IntN(numVoters)].NodeID
	}
	if !clean {
		r.QPS = float64(rng.IntN(4) * rng.IntN(200))
	}
	return r
}

// checkOrderIndependent: the order of nodes, ranges and replicas in the
// snapshot does not change the ops.
func checkOrderIndependent(t *testing.T, seed uint64, rng *rand.Rand, c *Cluster) {
	shuffled := Cluster{Replicas: c.Replicas, Nodes: slices.Clone(c.Nodes)}
	for _, r := range c.Ranges {
		r.Replicas = slices.Clone(r.Replicas)
		rng.Shuffle(len(r.Replicas), func(i, j int) { r.Replicas[i], r.Replicas[j] = r.Replicas[j], r.Replicas[i] })
		shuffled.Ranges = append(shuffled.Ranges, r)
	}
	rng.Shuffle(len(shuffled.Nodes), func(i, j int) {
		shuffled.Nodes[i], shuffled.Nodes[j] = shuffled.Nodes[j], shuffled.Nodes[i]
	})
	rng.Shuffle(len(shuffled.Ranges), func(i, j int) {
		shuffled.Ranges[i], shuffled.Ranges[j] = shuffled.Ranges[j], shuffled.Ranges[i]
	})
	if a, b := Schedule(c, Limits{}), Schedule(&shuffled, Limits{}); !slices.Equal(a, b) {
		t.Fatalf("seed %d: input order changed the ops:\n%v\n%v", seed, a, b)
	}
}

// checkSettled: every range has three voters, all on live nodes, and the
// live nodes' replica and leader counts are within one of each other.
func checkSettled(t *testing.T, seed uint64, c *Cluster) {
	replicas, leaders := map[uint64]int{}, map[uint64]int{}
	for _, r := range c.Ranges {
		if len(r.Replicas) != 3 || len(voterNodes(&r)) != 3 {
			t.Fatalf("seed %d: range %d ends with replicas %v", seed, r.ID, r.Replicas)
		}
		for _, id := range voterNodes(&r) {
			if st, _ := simState(c, id); st != NodeLive {
				t.Fatalf("seed %d: range %d ends with a replica on %s node %d", seed, r.ID, st, id)
			}
			replicas[id]++
		}
		leaders[r.Leader]++
	}
	for _, what := range []string{"replica", "leader"} {
		counts := map[string]map[uint64]int{"replica": replicas, "leader": leaders}[what]
		var live []int
		for _, n := range c.Nodes {
			if n.State == NodeLive {
				live = append(live, counts[n.ID])
			}
		}
		if spread := slices.Max(live) - slices.Min(live); spread > 1 {
			t.Fatalf("seed %d: %s counts on live nodes spread by %d: %v\n%s", seed, what, spread, live, renderNodes(c))
		}
	}
}
