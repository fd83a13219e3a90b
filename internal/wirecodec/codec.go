// Package wirecodec is gRPC's protobuf codec for a server whose handlers may
// answer with messages already in protobuf's wire format: watch responses
// encoded once for every watch they go to, and Range answers built from
// stored versions without decoding them.
package wirecodec

import (
	"google.golang.org/grpc/encoding"
	// Registers the codec below hands other messages to, before this
	// package's variables are initialised.
	_ "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// Message is a message already in wire format. It is a proto.Message too
// (decoded on demand), so any other codec still sends it right, only slower.
type Message interface {
	proto.Message
	// WireBytes returns the encoded message, in pieces. gRPC frees the
	// pieces after sending them, so they must not come from a pool the
	// message still uses.
	WireBytes() mem.BufferSlice
}

// Codec sends a Message's bytes as they are and hands every other message to
// gRPC's protobuf codec. Install it with grpc.ForceServerCodecV2(Codec{}).
type Codec struct{}

var protoCodec = encoding.GetCodecV2("proto")

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(Message); ok {
		return m.WireBytes(), nil
	}
	return protoCodec.Marshal(v)
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error { return protoCodec.Unmarshal(data, v) }

// Name implements encoding.CodecV2: it stands in for "proto".
func (Codec) Name() string { return protoCodec.Name() }
