package server

import "testing"

type fakeRange struct {
	id     uint64
	leader bool
}

func (f fakeRange) RangeID() uint64 { return f.id }
func (f fakeRange) IsLeader() bool  { return f.leader }

func TestPlanLeaderMove(t *testing.T) {
	mine := []fakeRange{{firstRangeID, true}, {5, true}, {9, true}, {12, false}, {7, true}}
	cases := []struct {
		name   string
		led    map[uint64]int
		self   uint64
		ranges []fakeRange
		id, to uint64
		ok     bool
	}{
		{"balanced", map[uint64]int{1: 2, 2: 2, 3: 1}, 1, mine, 0, 0, false},
		{"one ahead is not enough", map[uint64]int{1: 3, 2: 2, 3: 2}, 1, mine, 0, 0, false},
		{"two ahead moves the newest to the least leading", map[uint64]int{1: 4, 2: 2, 3: 1}, 1, mine, 9, 3, true},
		{"ties go to the lowest ID", map[uint64]int{1: 4, 2: 0, 3: 0}, 1, mine, 9, 2, true},
		{"never the first range", map[uint64]int{1: 3, 2: 0, 3: 0}, 1, []fakeRange{{firstRangeID, true}, {4, false}}, 0, 0, false},
		{"the least leading is self", map[uint64]int{1: 0, 2: 5, 3: 5}, 1, mine, 0, 0, false},
		{"only to a member of the range", map[uint64]int{1: 4, 2: 2, 3: 1, 4: 0}, 1, mine, 9, 3, true},
	}
	members := func(uint64) []uint64 { return []uint64{1, 2, 3} }
	for _, c := range cases {
		id, to, ok := planLeaderMove(c.led, c.self, c.ranges, members)
		if id != c.id || to != c.to || ok != c.ok {
			t.Errorf("%s: got (%d, %d, %v), want (%d, %d, %v)", c.name, id, to, ok, c.id, c.to, c.ok)
		}
	}
}
