package watchhub

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// WatchResponse field numbers written by hand (see encodedResponse).
const (
	headerNumber   = 1
	watchIDNumber  = 2
	fragmentNumber = 7
	eventsNumber   = 11
)

// encodedResponse is a watch response in protobuf's wire format but for its
// watch ID: every field but watch_id, already encoded. One encoding serves
// every watch it goes to; each watch's message is its watch_id field followed
// by these bytes (protobuf lets fields come in any order).
type encodedResponse struct {
	events int
	rest   mem.Buffer
}

func encodeResponses(resps []*pb.WatchResponse) []encodedResponse {
	out := make([]encodedResponse, 0, len(resps))
	for _, r := range resps {
		var b []byte
		if r.Header != nil {
			b = appendMessageField(b, headerNumber, r.Header)
		}
		if r.Fragment {
			b = protowire.AppendTag(b, fragmentNumber, protowire.VarintType)
			b = protowire.AppendVarint(b, 1)
		}
		for _, ev := range r.Events {
			b = appendMessageField(b, eventsNumber, ev)
		}
		out = append(out, encodedResponse{events: len(r.Events), rest: mem.SliceBuffer(b)})
	}
	return out
}

// appendMessageField appends m as field num of the message being encoded.
func appendMessageField(b []byte, num protowire.Number, m proto.Message) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(proto.Size(m)))
	// Marshalling messages built by this package cannot fail.
	b, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
	return b
}

// watchIDField is a watch's watch_id field, encoded once for all its
// responses (mem.SliceBuffer's Free does nothing, so gRPC may be handed it
// again and again); nil for ID 0, which proto3 leaves out.
func watchIDField(id int64) mem.Buffer {
	if id == 0 {
		return nil
	}
	b := protowire.AppendTag(nil, watchIDNumber, protowire.VarintType)
	return mem.SliceBuffer(protowire.AppendVarint(b, uint64(id)))
}

// forWatch is the response for the watch whose encoded watch_id field is
// idField.
func (e encodedResponse) forWatch(idField mem.Buffer) *wireResponse {
	w := &wireResponse{}
	if idField != nil {
		w.parts[w.n] = idField
		w.n++
	}
	w.parts[w.n] = e.rest
	w.n++
	return w
}

// wireResponse is a WatchResponse ready for the wire: a wirecodec.Message,
// whose bytes the server's codec sends as they are.
type wireResponse struct {
	parts [2]mem.Buffer
	n     int
}

// WireBytes is the encoded message, in pieces.
func (w *wireResponse) WireBytes() mem.BufferSlice { return w.parts[:w.n] }

// response decodes the message.
func (w *wireResponse) response() *pb.WatchResponse {
	r := &pb.WatchResponse{}
	// The bytes were encoded from a WatchResponse by this package.
	_ = proto.Unmarshal(w.WireBytes().Materialize(), r)
	return r
}

// ProtoReflect makes a wireResponse a proto.Message.
func (w *wireResponse) ProtoReflect() protoreflect.Message { return w.response().ProtoReflect() }
