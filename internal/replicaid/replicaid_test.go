package replicaid

import "testing"

func TestNext(t *testing.T) {
	set := func(ids ...uint64) map[uint64]struct{} {
		m := map[uint64]struct{}{}
		for _, id := range ids {
			m[id] = struct{}{}
		}
		return m
	}
	cases := []struct {
		name string
		node uint64
		sets []map[uint64]struct{}
		want uint64
	}{
		{"never held", 4, []map[uint64]struct{}{set(1, 2, 3)}, 4},
		{"removed once", 2, []map[uint64]struct{}{set(1, 3, 4), set(2)}, For(2, 1)},
		{"removed twice", 2, []map[uint64]struct{}{set(1, 3), set(2, For(2, 1))}, For(2, 2)},
		{"another node's incarnations do not count", 3, []map[uint64]struct{}{set(1), set(For(2, 5))}, 3},
	}
	for _, c := range cases {
		if got := Next(c.node, c.sets...); got != c.want {
			t.Errorf("%s: Next = %#x, want %#x", c.name, got, c.want)
		}
		if NodeOf(c.want) != c.node {
			t.Errorf("%s: NodeOf(%#x) = %d", c.name, c.want, NodeOf(c.want))
		}
	}
}
