package statemachine

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Field numbers of RangeResponse.kvs and KeyValue.key, written by hand below.
const (
	rangeKVsNumber = 2
	kvKeyNumber    = 1
)

// WireKVs holds the kvs of a Range in protobuf's wire format: each one as a
// RangeResponse kvs field, in order, ready to be sent. A stored version is a
// KeyValue encoded without its key (mvccWriter.put), and key is a KeyValue's
// first field, so a kv's encoding is its key field followed by the stored
// bytes — what proto.Marshal gives for the decoded KeyValue — and a Range can
// answer without decoding each version and encoding it again. The bytes are
// kept in chunks, so a large answer is never copied to grow it.
type WireKVs struct {
	full [][]byte
	cur  []byte
	n    int
}

// WireKVs chunks start at firstChunkBytes and double up to maxChunkBytes (a
// larger kv gets a chunk of its own size): a Get of one key allocates about
// what its answer takes, a large list a few hundred chunks.
const (
	firstChunkBytes = 1 << 10
	maxChunkBytes   = 256 << 10
)

// room returns the current chunk with at least size bytes free.
func (w *WireKVs) room(size int) []byte {
	if cap(w.cur)-len(w.cur) < size {
		next := firstChunkBytes
		if len(w.cur) > 0 {
			w.full = append(w.full, w.cur)
			next = min(2*cap(w.cur), maxChunkBytes)
		}
		w.cur = make([]byte, 0, max(size, next))
	}
	return w.cur
}

// addStored appends the kv of userKey whose stored version is stored.
func (w *WireKVs) addStored(userKey, stored []byte) {
	keyField := protowire.SizeTag(kvKeyNumber) + protowire.SizeBytes(len(userKey))
	kvLen := keyField + len(stored)
	b := w.room(protowire.SizeTag(rangeKVsNumber) + protowire.SizeBytes(kvLen))
	b = protowire.AppendTag(b, rangeKVsNumber, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(kvLen))
	b = protowire.AppendTag(b, kvKeyNumber, protowire.BytesType)
	b = protowire.AppendBytes(b, userKey)
	w.cur = append(b, stored...)
	w.n++
}

// AddKV appends a decoded kv (one read from another node).
func (w *WireKVs) AddKV(kv *mvccpb.KeyValue) {
	size := proto.Size(kv)
	b := w.room(protowire.SizeTag(rangeKVsNumber) + protowire.SizeBytes(size))
	b = protowire.AppendTag(b, rangeKVsNumber, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	// A KeyValue always marshals.
	w.cur, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, kv)
	w.n++
}

// Append moves o's kvs after w's; o must not be used afterwards.
func (w *WireKVs) Append(o *WireKVs) {
	if w.n == 0 && len(w.full) == 0 {
		*w = *o
		return
	}
	if len(w.cur) > 0 {
		w.full = append(w.full, w.cur)
	}
	w.full = append(w.full, o.Chunks()...)
	w.cur = nil
	w.n += o.n
}

// Len is the number of kvs.
func (w *WireKVs) Len() int { return w.n }

// Chunks returns the encoded kvs, in order.
func (w *WireKVs) Chunks() [][]byte {
	if len(w.cur) == 0 {
		return w.full
	}
	return append(w.full[:len(w.full):len(w.full)], w.cur)
}

// NumChunks is len(Chunks()), without building the slice.
func (w *WireKVs) NumChunks() int {
	if len(w.cur) == 0 {
		return len(w.full)
	}
	return len(w.full) + 1
}

// Chunk is Chunks()[i], without building the slice.
func (w *WireKVs) Chunk(i int) []byte {
	if i < len(w.full) {
		return w.full[i]
	}
	return w.cur
}

// WireRange is a Range answered in wire format: View.RangeWire's result.
type WireRange struct {
	KVs   WireKVs
	Count int64
	More  bool
}

// WireRangeable reports whether req can be answered by View.RangeWire: kvs
// in ascending key order with their values, no revision filters (nothing to
// decode for), and not count_only (no kvs at all).
func WireRangeable(req *pb.RangeRequest) bool {
	return keyOrdered(req) && !hasRevisionFilters(req) && !req.KeysOnly && !req.CountOnly
}

// executeRangeWire is executeRange for a request WireRangeable accepts.
func executeRangeWire(m mvccReader, req *pb.RangeRequest, currentRev, compactedRev int64, counts *countCache) (*WireRange, error) {
	out := &WireRange{}
	count, err := scanKVs(m, req, currentRev, compactedRev, counts, req.Limit, func(k, v []byte) error {
		out.KVs.addStored(k, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out.Count = count
	out.More = req.Limit > 0 && count > req.Limit
	return out, nil
}
