package router

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// TestWireStreamChunk: a RangeStream chunk in wire format is byte for byte
// the RangeStreamResponse proto.Marshal gives for the same kvs, and decodes
// to it.
func TestWireStreamChunk(t *testing.T) {
	for _, n := range []int{1, 3, 300} {
		var kvs []*mvccpb.KeyValue
		w := &statemachine.WireKVs{}
		for i := range n {
			kv := &mvccpb.KeyValue{Key: []byte{'k', byte(i)}, Value: bytes.Repeat([]byte{'v'}, 100*i), CreateRevision: 2, ModRevision: int64(3 + i), Version: 1}
			kvs = append(kvs, kv)
			w.AddKV(kv)
		}
		want := &pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: kvs}}
		wantBytes, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		c := wireStreamChunk{kvs: w}
		if got := c.WireBytes().Materialize(); !bytes.Equal(got, wantBytes) {
			t.Fatalf("%d kvs: wire bytes %x, want %x", n, got, wantBytes)
		}
		if got := c.ProtoReflect().Interface(); !proto.Equal(got, want) {
			t.Fatalf("%d kvs: decoded %v, want %v", n, got, want)
		}
	}
}
