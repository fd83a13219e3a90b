package statemachine

import (
	"bytes"
	"math/rand"
	"sort"
	"testing"
)

func TestDataKeyOrder(t *testing.T) {
	keys := [][]byte{{}, {0}, {0, 0}, {0, 1}, {0, 0xff}, []byte("a"), []byte("a\x00"), []byte("a\x00\x00"),
		[]byte("a\x01"), []byte("ab"), {0xff}, {0xff, 0}, {0xff, 0xff}}
	revs := []int64{1, 2, 255, 256, 1 << 40}
	type entry struct {
		key []byte
		rev int64
		enc []byte
	}
	var entries []entry
	for _, k := range keys {
		for _, r := range revs {
			entries = append(entries, entry{k, r, dataKey(k, r)})
		}
	}
	rand.Shuffle(len(entries), func(i, j int) { entries[i], entries[j] = entries[j], entries[i] })
	sort.Slice(entries, func(i, j int) bool { return bytes.Compare(entries[i].enc, entries[j].enc) < 0 })
	for i := 1; i < len(entries); i++ {
		a, b := entries[i-1], entries[i]
		c := bytes.Compare(a.key, b.key)
		if c > 0 || (c == 0 && a.rev <= b.rev) {
			t.Fatalf("%q@%d sorts before %q@%d", a.key, a.rev, b.key, b.rev)
		}
	}
	for _, e := range entries {
		k, r, err := decodeDataKey(e.enc)
		if err != nil || !bytes.Equal(k, e.key) || r != e.rev {
			t.Fatalf("decode(%x) = %q@%d %v", e.enc, k, r, err)
		}
		lo, hi := dataSpanBounds(keySpan{start: e.key, point: true})
		if bytes.Compare(e.enc, lo) < 0 || bytes.Compare(e.enc, hi) >= 0 {
			t.Fatalf("%q@%d outside its own point bounds", e.key, e.rev)
		}
		past := dataKeyPastVersions(e.key)
		for _, o := range entries {
			if bytes.Compare(o.key, e.key) > 0 && bytes.Compare(o.enc, past) < 0 {
				t.Fatalf("%q sorts before the end of %q's versions", o.key, e.key)
			}
		}
	}
}

func TestLeaseIndexKey(t *testing.T) {
	for _, id := range []int64{1, -1, 1 << 62} {
		k := leaseIndexKey(id, []byte("a\x00b"))
		gotID, key, err := decodeLeaseIndexKey(k)
		if err != nil || gotID != id || string(key) != "a\x00b" {
			t.Fatalf("decode(%x) = %d %q %v", k, gotID, key, err)
		}
		lo, hi := leaseIndexBounds(id, keySpan{start: []byte{}})
		if bytes.Compare(k, lo) < 0 || (hi != nil && bytes.Compare(k, hi) >= 0) {
			t.Fatalf("lease %d key outside its bounds", id)
		}
	}
}

// TestSplitVersion: the comparer's Split gives every version of a user key
// the same prefix (its data-key prefix), keeps every other key whole
// (including the data-key prefixes and past-versions keys iterators use as
// bounds, which NextPrefix requires to be unversioned), and satisfies
// Pebble's ordering rules: a prefix alone sorts before its versions, and
// keys ordered bytewise have prefixes ordered the same way.
func TestSplitVersion(t *testing.T) {
	users := [][]byte{{}, {0}, {0, 1}, {0, 0xff}, {1}, []byte("a"), []byte("a\x00\x01"), []byte("/registry/pods/default/web-0"),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	revs := []int64{1, 255, 256, 1 << 40, 0x0001000100010001}
	var all [][]byte
	for _, u := range users {
		prefix := dataKeyPrefix(u)
		if next := immediateSuccessor(nil, prefix); !bytes.Equal(next, dataKeyPastVersions(u)) {
			t.Errorf("%q: immediate successor %x, want the key past its versions %x", u, next, dataKeyPastVersions(u))
		}
		for _, k := range [][]byte{prefix, dataKeyPastVersions(u), leaseIndexKey(7, u), metaKey(3, metaState)} {
			if got := splitVersion(k); got != len(k) {
				t.Errorf("split(%x) = %d, want the whole key (%d)", k, got, len(k))
			}
			all = append(all, k)
		}
		for _, r := range revs {
			k := dataKey(u, r)
			if got := splitVersion(k); got != len(prefix) {
				t.Errorf("split(%q@%d) = %d, want %d", u, r, got, len(prefix))
			}
			if bytes.Compare(k[:splitVersion(k)], k) >= 0 {
				t.Errorf("%q@%d: its prefix does not sort before it", u, r)
			}
			if next := immediateSuccessor(nil, prefix); bytes.Compare(next, k) <= 0 || splitVersion(next) != len(next) {
				t.Errorf("%q@%d: the prefix's immediate successor %x does not sort after it or is versioned", u, r, next)
			}
			all = append(all, k)
		}
	}
	sort.Slice(all, func(i, j int) bool { return bytes.Compare(all[i], all[j]) < 0 })
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if bytes.Compare(a[:splitVersion(a)], b[:splitVersion(b)]) > 0 {
			t.Errorf("%x sorts before %x but its prefix sorts after", a, b)
		}
	}
}

// TestStateEncodingVersions: the range state round-trips, the older
// encodings still read (version 2 without a leadership term), and version 3,
// never released, is refused.
func TestStateEncodingVersions(t *testing.T) {
	st := rangeState{appliedIndex: 9, lastCmdRev: 8, currentRev: 7, compactedRev: 3, leaseFloor: 5, leadershipTerm: 4}
	got, err := decodeState(st.encode())
	if err != nil || got != st {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, st)
	}
	v3 := st.encode()
	v3[0] = 3
	if got, err := decodeState(v3); err == nil {
		t.Fatalf("version 3 read as %+v", got)
	}
	v2 := st.encode()[:1+8*5]
	v2[0] = 2
	if got, err := decodeState(v2); err != nil || got.leaseFloor != 5 || got.leadershipTerm != 0 {
		t.Fatalf("version 2 read as %+v, %v", got, err)
	}
	if _, err := decodeState(append([]byte{5}, v3[1:]...)); err == nil {
		t.Fatal("an unknown version was read")
	}
}
