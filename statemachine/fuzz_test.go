package statemachine

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// FuzzApplyCommand: any bytes applied as a range's Raft entry get a
// result (an error result for what is not a valid command) and never
// panic or stop the state machine, which then still serves reads.
func FuzzApplyCommand(f *testing.F) {
	f.Add(putCmd(f, 2, "k", "v"))
	f.Add(txnCmd(f, 3, &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("k"), Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Value{Value: []byte("v")}}},
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}}}},
	}))
	f.Add(mustMarshal(f, &tesserapb.Command{Revision: 4, Op: &tesserapb.Command_Compact{Compact: &tesserapb.CompactCommand{Revision: 2}}}))
	put := &tesserapb.Command{}
	if err := proto.Unmarshal(putCmd(f, 5, "b", "1"), put); err != nil {
		f.Fatal(err)
	}
	f.Add(mustMarshal(f, &tesserapb.Command{Op: &tesserapb.Command_Batch{Batch: &tesserapb.BatchCommand{Commands: []*tesserapb.Command{put, {Revision: -1}}}}}))
	f.Add([]byte{0x08, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newHarness(t)
		h.update(putCmd(t, h.nextRev(), "k", "v"))
		h.update(data) // fails the test if Update returns an error
		v := h.view()
		defer v.Close()
		if v.Revision() < 2 {
			t.Fatalf("revision %d after a write at 2", v.Revision())
		}
	})
}

// FuzzKeyEncoding: storage keys decode to what was encoded, keep the
// order of user keys, and Pebble's split of a data key is its versions'
// shared prefix; decoding arbitrary bytes never panics.
func FuzzKeyEncoding(f *testing.F) {
	f.Add([]byte("a"), []byte("b"), int64(5))
	f.Add([]byte{0}, []byte{0, 0}, int64(1))
	f.Add([]byte{0, 1}, []byte{0, 0xff}, int64(-1))
	f.Add([]byte{}, []byte{0xff, 0, 1}, int64(1<<62))
	f.Fuzz(func(t *testing.T, a, b []byte, rev int64) {
		k := dataKey(a, rev)
		u, r, err := decodeDataKey(k)
		if err != nil || !bytes.Equal(u, a) || r != rev {
			t.Fatalf("decodeDataKey(dataKey(%x, %d)) = %x, %d, %v", a, rev, u, r, err)
		}
		p := dataKeyPrefix(a)
		if !bytes.HasPrefix(k, p) || splitVersion(k) != len(p) || splitVersion(p) != len(p) {
			t.Fatalf("split of %x: %d (prefix %d), of the prefix: %d", k, splitVersion(k), len(p), splitVersion(p))
		}
		if past := dataKeyPastVersions(a); bytes.Compare(k, past) >= 0 || !bytes.Equal(immediateSuccessor(nil, p), past) {
			t.Fatalf("past %x's versions: %x, successor %x", a, past, immediateSuccessor(nil, p))
		}
		// Order: of user keys, of their encodings, and of any version of
		// one against any of the other.
		want := bytes.Compare(a, b)
		if got := bytes.Compare(p, dataKeyPrefix(b)); got != want {
			t.Fatalf("Compare(%x, %x) = %d, encoded %d", a, b, want, got)
		}
		if want != 0 {
			if got := bytes.Compare(dataKey(a, rev), dataKey(b, ^rev)); got != want {
				t.Fatalf("versions of %x and %x order %d, want %d", a, b, got, want)
			}
		}
		if rev >= 0 {
			rr, ru, err := decodeRevIndexKey(revIndexKey(rev, a))
			if err != nil || rr != rev || !bytes.Equal(ru, a) {
				t.Fatalf("revision index of %x at %d: %d %x %v", a, rev, rr, ru, err)
			}
		}
		lid, lk, err := decodeLeaseIndexKey(leaseIndexKey(rev, a))
		if err != nil || lid != rev || !bytes.Equal(lk, a) {
			t.Fatalf("lease index of %x under %d: %d %x %v", a, rev, lid, lk, err)
		}
		// Arbitrary bytes: an error, never a panic.
		_, _, _ = decodeDataKey(a)
		_, _, _ = decodeEscaped(a)
		_, _, _ = decodeRevIndexKey(a)
		_, _, _ = decodeLeaseIndexKey(a)
		_ = splitVersion(a)
	})
}

// FuzzRangeBounds: a request's keys clipped to a range's bounds are
// exactly the keys in both, and a prefix's end is above every key with
// the prefix and no other key below it.
func FuzzRangeBounds(f *testing.F) {
	f.Add([]byte("a"), []byte("m"), []byte("c"), []byte("z"), []byte("d"))
	f.Add([]byte("a"), []byte{0}, []byte{}, []byte{}, []byte("x"))
	f.Add([]byte("k"), []byte{}, []byte("a"), []byte("k"), []byte("k"))
	f.Add([]byte{0xff, 0xff}, []byte{0}, []byte{0xff}, []byte{}, []byte{0xff, 0xff, 0})
	f.Fuzz(func(t *testing.T, key, rangeEnd, start, end, probe []byte) {
		if len(end) > 0 && bytes.Compare(start, end) >= 0 {
			return // not a range's bounds
		}
		b := bounds{start: start, end: end}
		if len(end) == 0 {
			b.end = nil
		}
		req := spanOf(key, rangeEnd)
		in := func(s keySpan, k []byte) bool { return s.contains(k) }
		inBounds := func(k []byte) bool {
			return bytes.Compare(k, b.start) >= 0 && (b.end == nil || bytes.Compare(k, b.end) < 0)
		}
		k, e, ok := clipSpan(key, rangeEnd, b)
		for _, x := range [][]byte{probe, key, rangeEnd, start, end} {
			want := in(req, x) && inBounds(x)
			got := ok && in(spanOf(k, e), x)
			if got != want {
				t.Fatalf("clipSpan(%x, %x, [%x, %x)) = %x, %x, %v: holds %x: %v, want %v", key, rangeEnd, start, end, k, e, ok, x, got, want)
			}
		}
		if pe := prefixEnd(key); pe != nil {
			if bytes.Compare(pe, key) <= 0 || bytes.HasPrefix(pe, key) {
				t.Fatalf("prefixEnd(%x) = %x", key, pe)
			}
			withPrefix := append(bytes.Clone(key), probe...)
			if bytes.Compare(withPrefix, pe) >= 0 {
				t.Fatalf("prefixEnd(%x) = %x is not above %x", key, pe, withPrefix)
			}
			if !bytes.HasPrefix(probe, key) && bytes.Compare(probe, key) > 0 && bytes.Compare(probe, pe) < 0 {
				t.Fatalf("prefixEnd(%x) = %x is above %x, which lacks the prefix", key, pe, probe)
			}
		}
	})
}
