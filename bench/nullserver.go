package bench

import (
	"context"
	"net"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// nullKV answers every etcd KV request at once with an empty response: a
// server doing no work, so a workload run against it measures the ceiling
// of the client, gRPC and the machine. Txns report success, so txn-put
// takes its success path. Other services (Watch, Lease) are not served and
// answer Unimplemented.
type nullKV struct {
	pb.UnimplementedKVServer
}

func header() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 1, MemberId: 1, Revision: 1, RaftTerm: 1}
}

func (nullKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	return &pb.RangeResponse{Header: header()}, nil
}

func (nullKV) RangeStream(_ *pb.RangeRequest, stream grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	return stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Header: header()}})
}

func (nullKV) Put(context.Context, *pb.PutRequest) (*pb.PutResponse, error) {
	return &pb.PutResponse{Header: header()}, nil
}

func (nullKV) DeleteRange(context.Context, *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return &pb.DeleteRangeResponse{Header: header()}, nil
}

func (nullKV) Txn(context.Context, *pb.TxnRequest) (*pb.TxnResponse, error) {
	return &pb.TxnResponse{Header: header(), Succeeded: true}, nil
}

func (nullKV) Compact(context.Context, *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return &pb.CompactionResponse{Header: header()}, nil
}

// NullServer is the empty-handler etcd KV server.
type NullServer struct {
	grpc   *grpc.Server
	ln     net.Listener
	served chan struct{} // closed when Serve has returned
}

// StartNullServer listens on addr ("127.0.0.1:0" for any port) and serves.
func StartNullServer(addr string) (*NullServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &NullServer{grpc: grpc.NewServer(), ln: ln, served: make(chan struct{})}
	pb.RegisterKVServer(s.grpc, nullKV{})
	go func() {
		defer close(s.served)
		_ = s.grpc.Serve(ln) // returns when Stop closes the listener
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *NullServer) Addr() string { return s.ln.Addr().String() }

// Stop stops serving and closes every connection.
func (s *NullServer) Stop() {
	s.grpc.Stop()
	<-s.served
}
