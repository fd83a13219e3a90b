package router

import (
	"testing"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestSerialPins: a serializable read of several ranges is read again at
// the lowest floor of a range another range committed a write with above
// that floor; the ranges read at or below it keep their revision.
func TestSerialPins(t *testing.T) {
	state := func(id uint64, floor, rev int64, co ...int64) *tesserapb.SerialReadState {
		s := &tesserapb.SerialReadState{RangeId: id, Floor: floor, Revision: rev}
		for i := 0; i < len(co); i += 2 {
			s.CoRangeIds = append(s.CoRangeIds, uint64(co[i]))
			s.CoRevisions = append(s.CoRevisions, co[i+1])
		}
		return s
	}
	read := func(key, end string, s *tesserapb.SerialReadState) spanRead {
		return spanRead{key: []byte(key), end: []byte(end), state: s}
	}
	for _, tc := range []struct {
		name  string
		reads []spanRead
		again bool
		revs  []int64
	}{{
		name:  "no writes spanning ranges",
		reads: []spanRead{read("a", "m", state(2, 40, 40)), read("m", "\x00", state(3, 7, 5))},
		revs:  []int64{40, 5},
	}, {
		name: "both ranges applied the write",
		reads: []spanRead{
			read("a", "m", state(2, 30, 30, 3, 30)),
			read("m", "\x00", state(3, 31, 30, 2, 30)),
		},
		revs: []int64{30, 30},
	}, {
		name: "range 3 is still held (floor 25) for the write range 2 committed at 30",
		reads: []spanRead{
			read("a", "m", state(2, 35, 35, 3, 30)),
			read("m", "x", state(3, 25, 20)),
			read("x", "\x00", state(4, 50, 50)),
		},
		again: true,
		revs:  []int64{25, 20, 25},
	}, {
		name: "a range the write touched but the read does not cover",
		reads: []spanRead{
			read("a", "m", state(2, 35, 35, 9, 30)),
			read("m", "\x00", state(3, 25, 20)),
		},
		revs: []int64{35, 20},
	}} {
		pins, again := serialPinsOf(tc.reads)
		if again != tc.again {
			t.Errorf("%s: read again %v, want %v", tc.name, again, tc.again)
		}
		for i, rd := range tc.reads {
			if rev, ok := pins.at(rd.key); !ok || rev != tc.revs[i] {
				t.Errorf("%s: part from %q pinned at %d (%v), want %d", tc.name, rd.key, rev, ok, tc.revs[i])
			}
		}
	}
	pins := serialPins{{key: []byte("a"), end: []byte("m"), rev: 3}, {key: []byte("p"), rev: 4}, {key: []byte("q"), end: []byte{0}, rev: 5}}
	for key, want := range map[string]int64{"a": 3, "l": 3, "p": 4, "q": 5, "zz": 5, "m": 0, "pa": 0} {
		if rev, _ := pins.at([]byte(key)); rev != want {
			t.Errorf("pin of %q: %d, want %d", key, rev, want)
		}
	}
}
