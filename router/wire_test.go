package router

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// TestWireStreamChunk: a RangeStream message in wire format is byte for byte
// the RangeStreamResponse proto.Marshal gives for the same kvs, with and
// without header, count and more, and decodes to it.
func TestWireStreamChunk(t *testing.T) {
	for _, n := range []int{0, 1, 3, 300} {
		for _, last := range []bool{false, true} {
			var kvs []*mvccpb.KeyValue
			w := &statemachine.WireKVs{}
			for i := range n {
				kv := &mvccpb.KeyValue{Key: []byte{'k', byte(i)}, Value: bytes.Repeat([]byte{'v'}, 100*i), CreateRevision: 2, ModRevision: int64(3 + i), Version: 1}
				kvs = append(kvs, kv)
				w.AddKV(kv)
			}
			want := &pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: kvs}}
			resp := &WireRangeResponse{KVs: *w}
			if last {
				header := &pb.ResponseHeader{ClusterId: 7, MemberId: 8, Revision: 300, RaftTerm: 2}
				want.RangeResponse.Header, want.RangeResponse.Count, want.RangeResponse.More = header, 1000, true
				resp.Header, resp.Count, resp.More = header, 1000, true
			}
			wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			c := wireStreamChunk{resp: resp}
			if got := c.WireBytes().Materialize(); !bytes.Equal(got, wantBytes) {
				t.Fatalf("%d kvs, last %v: wire bytes %x, want %x", n, last, got, wantBytes)
			}
			if got := c.ProtoReflect().Interface(); !proto.Equal(got, want) {
				t.Fatalf("%d kvs, last %v: decoded %v, want %v", n, last, got, want)
			}
		}
	}
}

// TestNextChunkLimit: etcd's rule for the next RangeStream message's limit.
func TestNextChunkLimit(t *testing.T) {
	for _, c := range []struct {
		last                   int64
		lastBytes, targetBytes int
		want                   int64
	}{
		{10, 100, 1000, 20},   // under half: double
		{10, 499, 1000, 20},   // just under half
		{10, 500, 1000, 10},   // half: keep
		{10, 2000, 1000, 10},  // twice: keep
		{10, 2001, 1000, 5},   // over twice: halve
		{1, 5000, 1000, 1},    // never below one
		{3, 999999, 1000, 1},  // 3/2 is 1
		{64, 0, 1 << 20, 128}, // empty
	} {
		if got := nextChunkLimit(c.last, c.lastBytes, c.targetBytes); got != c.want {
			t.Errorf("nextChunkLimit(%d, %d, %d) = %d, want %d", c.last, c.lastBytes, c.targetBytes, got, c.want)
		}
	}
}
