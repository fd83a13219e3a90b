package node

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tesserakv/tessera/auth"
)

// dialNode opens a TCP connection to another node's address.
func (c *Config) dialNode(ctx context.Context, addr string) (net.Conn, error) {
	if c.Knobs.DialNode != nil {
		return c.Knobs.DialNode(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// nodeDialOptions are the gRPC options of a connection to another node's
// Internal service; every call shows peerToken() when it is not empty.
func (c *Config) nodeDialOptions(peerToken func() string) []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withPeerToken(ctx, peerToken), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withPeerToken(ctx, peerToken), desc, cc, method, opts...)
		}),
	}
	if c.Knobs.DialNode != nil {
		opts = append(opts, grpc.WithContextDialer(c.Knobs.DialNode))
	}
	return opts
}

// withPeerToken adds the peer token to a call's metadata.
func withPeerToken(ctx context.Context, peerToken func() string) context.Context {
	if tok := peerToken(); tok != "" {
		return metadata.AppendToOutgoingContext(ctx, auth.PeerField, tok)
	}
	return ctx
}
