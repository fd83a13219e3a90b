package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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
// services on its peer port, with peer TLS when the members talk over it.
func (c *Config) nodeDialOptions(peerTLS *tls.Config) []grpc.DialOption {
	if peerTLS != nil {
		return c.dialOptions(credentials.NewTLS(peerTLS))
	}
	return c.dialOptions(insecure.NewCredentials())
}

// dialOptions are creds, and the tests' dialer when they set one.
func (c *Config) dialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if c.Knobs.DialNode != nil {
		opts = append(opts, grpc.WithContextDialer(c.Knobs.DialNode))
	}
	return opts
}

// memberDialOptions are the gRPC options of a connection to a member's
// client URL (to join it): TLS for an https URL, trusting
// --trusted-ca-file and showing --cert-file when given.
func (c *Config) memberDialOptions(url string) ([]grpc.DialOption, error) {
	creds := insecure.NewCredentials()
	if IsHTTPS(url) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if !c.ClientTLS.Empty() {
			var err error
			if cfg, err = c.ClientTLS.ClientConfig(); err != nil {
				return nil, err
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	return c.dialOptions(creds), nil
}

// peerTLSConfigs are the peer port's TLS configurations, nil without peer
// TLS: the listener's (offering h2 to the nodes' gRPC clients) and the
// connections this node opens.
func (c *Config) peerTLSConfigs() (server, client *tls.Config, err error) {
	if !c.PeerSecure() {
		return nil, nil, nil
	}
	if server, err = c.PeerTLS.ServerConfig("h2"); err != nil {
		return nil, nil, fmt.Errorf("peer TLS: %w", err)
	}
	if client, err = c.PeerTLS.ClientConfig(); err != nil {
		return nil, nil, fmt.Errorf("peer TLS: %w", err)
	}
	return server, client, nil
}
