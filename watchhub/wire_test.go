package watchhub

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/wirecodec"
)

// TestWireResponse: a response encoded once and given each watch's ID must
// decode to the response a plain protobuf encoding of it gives, through
// wirecodec.Codec and through gRPC's own codec.
func TestWireResponse(t *testing.T) {
	header := &pb.ResponseHeader{ClusterId: 7, MemberId: 3, Revision: 42, RaftTerm: 2}
	put := &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("v"), CreateRevision: 40, ModRevision: 41, Version: 2, Lease: 9}}
	del := &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b"), ModRevision: 42},
		PrevKv: &mvccpb.KeyValue{Key: []byte("b"), Value: []byte("old"), CreateRevision: 5, ModRevision: 5, Version: 1}}
	cases := []*pb.WatchResponse{
		{Header: header, Events: []*mvccpb.Event{put, del}},
		{Header: header, Events: []*mvccpb.Event{put}, Fragment: true},
		{Header: header},
		{Events: []*mvccpb.Event{del}},
	}
	encoded := encodeResponses(cases)
	for i, want := range cases {
		if encoded[i].events != len(want.Events) {
			t.Fatalf("case %d: %d events counted, want %d", i, encoded[i].events, len(want.Events))
		}
		for _, id := range []int64{0, 1, 300, 1 << 40} {
			w := proto.Clone(want).(*pb.WatchResponse)
			w.WatchId = id
			wire := encoded[i].forWatch(watchIDField(id))
			data, err := wirecodec.Codec{}.Marshal(wire)
			if err != nil {
				t.Fatal(err)
			}
			for name, b := range map[string][]byte{"Codec": data.Materialize(), "proto codec": mustMarshal(t, wire)} {
				got := &pb.WatchResponse{}
				if err := proto.Unmarshal(b, got); err != nil {
					t.Fatalf("case %d id %d via %s: %v", i, id, name, err)
				}
				if !proto.Equal(got, w) {
					t.Fatalf("case %d id %d via %s: decoded %v, want %v", i, id, name, got, w)
				}
			}
		}
	}
}

func mustMarshal(t *testing.T, m any) []byte {
	t.Helper()
	data, err := encoding.GetCodecV2("proto").Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data.Materialize()
}

// BenchmarkWireResponse: one watch's message for an event already encoded
// for its group, as the hub hands it to gRPC (allocations per message).
func BenchmarkWireResponse(b *testing.B) {
	ev := &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte("w/00000000012345"), Value: make([]byte, 256), CreateRevision: 40, ModRevision: 41, Version: 2}}
	encoded := encodeResponses([]*pb.WatchResponse{{Header: &pb.ResponseHeader{Revision: 41}, Events: []*mvccpb.Event{ev}}})[0]
	idField := watchIDField(12)
	b.ReportAllocs()
	for b.Loop() {
		data, err := wirecodec.Codec{}.Marshal(encoded.forWatch(idField))
		if err != nil || data.Len() == 0 {
			b.Fatal(err)
		}
	}
}
