package router

import (
	"context"
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// Range serves etcd's KV.Range. A linearizable read runs on the range leader
// at a fresh oracle revision R and answers with header revision R; a
// serializable one reads the local replica, with its own latest revision.
func (r *Router) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(req); err != nil {
		return nil, err
	}
	out, err := r.read(ctx, req.Serializable, req.Revision, func(v *statemachine.View) (any, error) {
		resp, err := v.Range(req)
		if err != nil {
			return nil, err
		}
		resp.Header = r.header(v.Revision())
		return resp, nil
	})
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.RangeResponse, error) {
			return pb.NewKVClient(cc).Range(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	return out.(*pb.RangeResponse), nil
}

// rangeStreamChunkKVs is how many key-values one RangeStream message carries
// at most.
const rangeStreamChunkKVs = 256

// RangeStream serves etcd 3.7's streaming Range: the result in chunks, with
// header, count and more on the last one; all chunks read one view, at one
// revision.
func (r *Router) RangeStream(req *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := checkRangeStream(req); err != nil {
		return err
	}
	ctx := stream.Context()
	sent := false
	_, err := r.read(ctx, req.Serializable, req.Revision, func(v *statemachine.View) (any, error) {
		// Hold back one chunk so the last one can carry header, count and more.
		var pending []*mvccpb.KeyValue
		count, more, err := v.RangeStream(req, rangeStreamChunkKVs, func(kvs []*mvccpb.KeyValue) error {
			if pending != nil {
				sent = true
				if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: pending}}); err != nil {
					return err
				}
			}
			pending = kvs
			return nil
		})
		if err != nil {
			return nil, err
		}
		sent = true
		last := &pb.RangeResponse{Header: r.header(v.Revision()), Kvs: pending, Count: count, More: more}
		return nil, stream.Send(&pb.RangeStreamResponse{RangeResponse: last})
	})
	if err != nil && !sent {
		if _, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (struct{}, error) {
			return struct{}{}, relayRangeStream(ctx, cc, req, stream)
		}); ok {
			return ferr
		}
	}
	return ToGRPC(err)
}

// relayRangeStream serves a RangeStream from another node's answer.
func relayRangeStream(ctx context.Context, cc *grpc.ClientConn, req *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	up, err := pb.NewKVClient(cc).RangeStream(ctx, req)
	if err != nil {
		return err
	}
	for {
		msg, err := up.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// Put serves KV.Put as a one-operation Txn.
func (r *Router) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(req); err != nil {
		return nil, err
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: req}}}}
	resp, err := r.txn(ctx, txn)
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.PutResponse, error) {
			return pb.NewKVClient(cc).Put(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	put := resp.Responses[0].GetResponsePut()
	put.Header = resp.Header
	return put, nil
}

// DeleteRange serves KV.DeleteRange as a one-operation Txn.
func (r *Router) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(req); err != nil {
		return nil, err
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: req}}}}
	resp, err := r.txn(ctx, txn)
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.DeleteRangeResponse, error) {
			return pb.NewKVClient(cc).DeleteRange(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	del := resp.Responses[0].GetResponseDeleteRange()
	del.Header = resp.Header
	return del, nil
}

// Txn serves KV.Txn.
func (r *Router) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(req, r.cfg.MaxTxnOps); err != nil {
		return nil, err
	}
	resp, err := r.txn(ctx, req)
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.TxnResponse, error) {
			return pb.NewKVClient(cc).Txn(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	return resp, nil
}

// txn proposes a checked TxnRequest and returns its response with a full header.
func (r *Router) txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	if r.cfg.MaxRequestBytes > 0 && len(body) > r.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	if r.noSpace() && hasPut(req.Success, req.Failure) {
		return nil, rpctypes.ErrGRPCNoSpace
	}
	cmd := &tesserapb.Command{Op: &tesserapb.Command_Txn{Txn: &tesserapb.TxnCommand{Request: body}}}
	res, err := r.rng.Write(ctx, cmd, true)
	if err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{}
	if err := proto.Unmarshal(res.Response, resp); err != nil {
		return nil, fmt.Errorf("router: decoding txn response: %w", err)
	}
	resp.Header = r.header(resp.GetHeader().GetRevision())
	return resp, nil
}

// Compact serves KV.Compact: every range applies the compaction before it is
// answered. A revision above a fresh oracle revision is in the future; the
// range leader's fence is raised to the compaction revision first, so no
// write at or below it can reach the range after it.
func (r *Router) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	cmd := &tesserapb.Command{Op: &tesserapb.Command_Compact{Compact: &tesserapb.CompactCommand{Revision: req.Revision}}}
	_, err := r.readRevision(ctx, req.Revision)
	if err == nil {
		err = r.rng.Fence(ctx, req.Revision)
	}
	var res *tesserapb.Result
	if err == nil {
		res, err = r.rng.Write(ctx, cmd, false)
	}
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.CompactionResponse, error) {
			return pb.NewKVClient(cc).Compact(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	resp := &pb.CompactionResponse{}
	if err := proto.Unmarshal(res.Response, resp); err != nil {
		return nil, ToGRPC(fmt.Errorf("router: decoding compaction response: %w", err))
	}
	resp.Header = r.header(resp.GetHeader().GetRevision())
	return resp, nil
}
