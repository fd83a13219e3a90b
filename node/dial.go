package node

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
// Internal service.
func (c *Config) nodeDialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if c.Knobs.DialNode != nil {
		opts = append(opts, grpc.WithContextDialer(c.Knobs.DialNode))
	}
	return opts
}
