package server

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// terminatedTLS tells the gRPC server about TLS its listener already
// terminated: an https client URL carries gRPC and HTTP/1 on one port, so
// the TLS handshake happens before a connection is told apart (httpmux.go),
// and gRPC gets the decrypted stream. It hands gRPC the connection's TLS
// state, so that a verified client certificate can name the caller.
type terminatedTLS struct{}

// tlsStater is a connection that went through a TLS handshake.
type tlsStater interface {
	ConnectionState() (tls.ConnectionState, bool)
}

func (terminatedTLS) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if s, ok := c.(tlsStater); ok {
		if st, ok := s.ConnectionState(); ok {
			return c, credentials.TLSInfo{State: st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
		}
	}
	return c, nil, nil
}

func (terminatedTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server: terminatedTLS is for servers")
}

func (terminatedTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (terminatedTLS) Clone() credentials.TransportCredentials { return terminatedTLS{} }

func (terminatedTLS) OverrideServerName(string) error { return nil }

// ConnectionState reports the TLS state of a connection accepted on an
// https client URL.
func (c *peekedConn) ConnectionState() (tls.ConnectionState, bool) {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}
