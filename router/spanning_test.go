package router

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestMergeRange: the ranges' key-ordered parts of a Range in a write
// spanning ranges merge into one store's answer: counts summed, and a
// limited Range sorted by another target without an order sorts only the
// first keys one store would have collected, as etcd does.
func TestMergeRange(t *testing.T) {
	kv := func(key string, mod int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), ModRevision: mod, Value: []byte("v")}
	}
	parts := func() []*pb.RangeResponse {
		return []*pb.RangeResponse{
			{Kvs: []*mvccpb.KeyValue{kv("a", 9), kv("c", 1)}, Count: 2},
			{Kvs: []*mvccpb.KeyValue{kv("d", 5), kv("e", 2)}, Count: 2},
		}
	}
	keys := func(r *pb.RangeResponse) (out string) {
		for _, kv := range r.Kvs {
			out += string(kv.Key)
		}
		return out
	}
	for _, tc := range []struct {
		req  *pb.RangeRequest
		want string
		more bool
	}{
		{&pb.RangeRequest{}, "acde", false},
		{&pb.RangeRequest{Limit: 3}, "acd", true},
		// Only a, c and d (the first limit+1 by key) are sorted by mod.
		{&pb.RangeRequest{Limit: 2, SortTarget: pb.RangeRequest_MOD}, "cd", true},
		// With an order, every key is.
		{&pb.RangeRequest{Limit: 2, SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_ASCEND}, "ce", true},
		{&pb.RangeRequest{SortOrder: pb.RangeRequest_DESCEND}, "edca", false},
		{&pb.RangeRequest{CountOnly: true}, "", false},
	} {
		got := mergeRange(tc.req, parts())
		if keys(got) != tc.want || got.More != tc.more || got.Count != 4 {
			t.Errorf("%v: %q more=%t count=%d, want %q more=%t count=4", tc.req, keys(got), got.More, got.Count, tc.want, tc.more)
		}
	}
	if got := mergeRange(&pb.RangeRequest{KeysOnly: true}, parts()); got.Kvs[0].Value != nil {
		t.Error("keys_only kept a value")
	}
}
