package router

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tesserakv/tessera/statemachine"
)

// RangeResponse field numbers written by hand (kvs, 2, is WireKVs').
const (
	rangeHeaderNumber = 1
	rangeMoreNumber   = 3
	rangeCountNumber  = 4
)

// WireRangeResponse is a RangeResponse whose kvs are already in wire format
// (statemachine.WireKVs): a wirecodec.Message, sent as it is by the server's
// codec, and a proto.Message decoded on demand for anything else.
type WireRangeResponse struct {
	Header *pb.ResponseHeader
	KVs    statemachine.WireKVs
	Count  int64
	More   bool
}

// WireBytes is the encoded response: header, kvs, more and count.
func (w *WireRangeResponse) WireBytes() mem.BufferSlice {
	var head, tail []byte
	if w.Header != nil {
		head = protowire.AppendTag(head, rangeHeaderNumber, protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(proto.Size(w.Header)))
		// A ResponseHeader always marshals.
		head, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(head, w.Header)
	}
	if w.More {
		tail = protowire.AppendTag(tail, rangeMoreNumber, protowire.VarintType)
		tail = protowire.AppendVarint(tail, 1)
	}
	if w.Count != 0 {
		tail = protowire.AppendTag(tail, rangeCountNumber, protowire.VarintType)
		tail = protowire.AppendVarint(tail, uint64(w.Count))
	}
	out := make(mem.BufferSlice, 0, w.KVs.NumChunks()+2)
	if len(head) > 0 {
		out = append(out, mem.SliceBuffer(head))
	}
	out = appendKVs(out, &w.KVs)
	if len(tail) > 0 {
		out = append(out, mem.SliceBuffer(tail))
	}
	return out
}

// Response decodes the response.
func (w *WireRangeResponse) Response() *pb.RangeResponse {
	r := &pb.RangeResponse{}
	// The bytes were encoded from stored versions and a header; a store
	// whose versions do not decode fails its reads elsewhere too.
	_ = proto.Unmarshal(w.WireBytes().Materialize(), r)
	return r
}

// ProtoReflect makes a WireRangeResponse a proto.Message.
func (w *WireRangeResponse) ProtoReflect() protoreflect.Message { return w.Response().ProtoReflect() }

// rangeStreamResponseNumber is RangeStreamResponse.range_response's field
// number.
const rangeStreamResponseNumber = 1

// wireStreamChunk is a RangeStream message whose kvs are already in wire
// format: a wirecodec.Message, and a proto.Message decoded on demand.
type wireStreamChunk struct {
	resp *WireRangeResponse
}

// WireBytes is the encoded RangeStreamResponse: its range_response field
// holding resp.
func (c wireStreamChunk) WireBytes() mem.BufferSlice {
	inner := c.resp.WireBytes()
	var head []byte
	head = protowire.AppendTag(head, rangeStreamResponseNumber, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(inner.Len()))
	return append(mem.BufferSlice{mem.SliceBuffer(head)}, inner...)
}

// appendKVs appends kvs' chunks to out, as they are.
func appendKVs(out mem.BufferSlice, kvs *statemachine.WireKVs) mem.BufferSlice {
	for i := range kvs.NumChunks() {
		out = append(out, mem.SliceBuffer(kvs.Chunk(i)))
	}
	return out
}

// ProtoReflect makes a wireStreamChunk a proto.Message.
func (c wireStreamChunk) ProtoReflect() protoreflect.Message {
	r := &pb.RangeStreamResponse{}
	// See WireRangeResponse.Response.
	_ = proto.Unmarshal(c.WireBytes().Materialize(), r)
	return r.ProtoReflect()
}
