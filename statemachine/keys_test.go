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
