package server

import (
	"context"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/tesserakv/tessera/router"
)

// registerKV registers etcd's KV service, served by the router, with Range
// answered by Router.RangeWire: a large Range then goes out built from the
// stored versions, without decoding them into messages and encoding those
// again (the server's codec is wirecodec.Codec). The generated handler could
// only return a *RangeResponse; every other method keeps its generated one.
func registerKV(s *grpc.Server, r *router.Router) {
	desc := pb.KV_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "Range" {
			desc.Methods[i].Handler = rangeHandler
		}
	}
	s.RegisterService(&desc, r)
}

// rangeHandler is the generated KV.Range handler calling RangeWire.
func rangeHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(pb.RangeRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	call := func(ctx context.Context, req any) (any, error) {
		resp, err := srv.(*router.Router).RangeWire(ctx, req.(*pb.RangeRequest))
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
	if interceptor == nil {
		return call(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: pb.KV_Range_FullMethodName}, call)
}
