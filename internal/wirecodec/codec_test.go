package wirecodec

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// wired is a Message whose bytes are given.
type wired struct {
	*pb.RangeResponse
	parts [][]byte
}

func (w wired) WireBytes() mem.BufferSlice {
	var out mem.BufferSlice
	for _, p := range w.parts {
		out = append(out, mem.SliceBuffer(p))
	}
	return out
}

// TestCodec: a Message goes out as its own bytes, piece for piece; any other
// message as gRPC's protobuf codec encodes it; the codec stands in for
// "proto".
func TestCodec(t *testing.T) {
	m := wired{&pb.RangeResponse{Count: 1}, [][]byte{{0x20, 0x05}, {0x18, 0x01}}}
	data, err := Codec{}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 2 || !bytes.Equal(data.Materialize(), []byte{0x20, 0x05, 0x18, 0x01}) {
		t.Fatalf("Message sent as %d pieces %x, want its own 2 pieces", len(data), data.Materialize())
	}
	plain := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 9}, Count: 3, More: true}
	data, err = Codec{}.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	want, err := proto.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data.Materialize(), want) {
		t.Fatalf("plain message encoded as %x, want %x", data.Materialize(), want)
	}
	got := &pb.RangeResponse{}
	if err := (Codec{}).Unmarshal(data, got); err != nil || !proto.Equal(got, plain) {
		t.Fatalf("Unmarshal = %v, %v; want %v", got, err, plain)
	}
	if (Codec{}).Name() != "proto" {
		t.Fatalf("Codec's name is %q", Codec{}.Name())
	}
}
