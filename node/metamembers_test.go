package node

import (
	"testing"

	"github.com/tesserakv/tessera/internal/replicaid"
	"github.com/tesserakv/tessera/placement"
)

func TestPlanMetaChange(t *testing.T) {
	const (
		live = placement.NodeLive
		dead = placement.NodeDead
	)
	cluster := func(states ...placement.NodeState) *placement.Cluster {
		c := &placement.Cluster{}
		for i, st := range states {
			c.Nodes = append(c.Nodes, placement.Node{ID: uint64(i + 1), State: st})
		}
		return c
	}
	ids := func(ids ...uint64) map[uint64]string {
		m := map[uint64]string{}
		for _, id := range ids {
			m[id] = "addr"
		}
		return m
	}
	removed := func(ids ...uint64) map[uint64]struct{} {
		m := map[uint64]struct{}{}
		for _, id := range ids {
			m[id] = struct{}{}
		}
		return m
	}
	// running: every live node runs replica ID = node ID unless overridden.
	runningOf := func(c *placement.Cluster, override map[uint64]uint64) map[uint64]uint64 {
		r := map[uint64]uint64{}
		for _, n := range c.Nodes {
			if n.State == live {
				r[n.ID] = n.ID
			}
		}
		for k, v := range override {
			r[k] = v
		}
		return r
	}
	cases := []struct {
		name    string
		c       *placement.Cluster
		m       metaMembers
		running map[uint64]uint64
		skip    map[uint64]bool
		want    metaChange
		none    bool
	}{
		{
			name: "five voters, all live: nothing",
			c:    cluster(live, live, live, live, live, live),
			m:    metaMembers{voters: ids(1, 2, 3, 4, 5), learners: ids(6)},
			none: true,
		},
		{
			name: "fewer than five voters: the lowest live learner is promoted",
			c:    cluster(live, live, live, dead, live),
			m:    metaMembers{voters: ids(1, 2, 3), learners: ids(5, 4)},
			want: metaChange{kind: metaPromote, node: 5, replicaID: 5},
		},
		{
			name: "a dead voter is removed when a live learner can replace it",
			c:    cluster(live, live, dead, live, live, live),
			m:    metaMembers{voters: ids(1, 2, 3, 4, 5), learners: ids(6)},
			want: metaChange{kind: metaRemoveDead, node: 3, replicaID: 3},
		},
		{
			name: "a dead voter stays when no learner can replace it",
			c:    cluster(live, live, dead, live, live, dead),
			m:    metaMembers{voters: ids(1, 2, 3, 4, 5), learners: ids(6)},
			none: true,
		},
		{
			name: "a dead voter stays when the others would have no live quorum",
			c:    cluster(live, live, dead, dead, dead, live),
			m:    metaMembers{voters: ids(1, 2, 3, 4, 5), learners: ids(6)},
			none: true,
		},
		{
			name: "a live node whose replica was removed is added again under a new incarnation",
			c:    cluster(live, live, live, live, live, live),
			m:    metaMembers{voters: ids(1, 2, 4, 5, 6), removed: removed(3)},
			want: metaChange{kind: metaReadd, node: 3, replicaID: replicaid.For(3, 1)},
		},
		{
			name:    "incarnations already used are skipped",
			c:       cluster(live, live, live, live, live, live),
			m:       metaMembers{voters: ids(1, 2, 4, 5, 6), removed: removed(3, replicaid.For(3, 1))},
			running: map[uint64]uint64{3: replicaid.For(3, 1)},
			want:    metaChange{kind: metaReadd, node: 3, replicaID: replicaid.For(3, 2)},
		},
		{
			name:    "a node added again but still running its old replica is told again",
			c:       cluster(live, live, live, live, live, live),
			m:       metaMembers{voters: ids(1, 2, 4, 5, 6), learners: ids(replicaid.For(3, 1)), removed: removed(3)},
			running: map[uint64]uint64{3: 3},
			want:    metaChange{kind: metaTell, node: 3, replicaID: replicaid.For(3, 1)},
		},
		{
			name: "a node being removed from the cluster is not added again",
			c:    cluster(live, live, live, live, live, live),
			m:    metaMembers{voters: ids(1, 2, 4, 5, 6), removed: removed(3)},
			skip: map[uint64]bool{3: true},
			none: true,
		},
	}
	for _, tc := range cases {
		running := runningOf(tc.c, tc.running)
		got, ok := planMetaChange(tc.c, tc.m, running, tc.skip)
		if tc.none {
			if ok {
				t.Errorf("%s: planned %+v, want nothing", tc.name, got)
			}
			continue
		}
		if !ok || got != tc.want {
			t.Errorf("%s: planned %+v (%v), want %+v", tc.name, got, ok, tc.want)
		}
	}
}
