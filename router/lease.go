package router

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// MaxLeaseTTLSeconds is etcd's largest lease TTL.
const MaxLeaseTTLSeconds = 9_000_000_000

// LeaseGrant serves Lease.LeaseGrant.
func (r *Router) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if req.TTL > MaxLeaseTTLSeconds {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	if r.noSpace() {
		return nil, rpctypes.ErrGRPCNoSpace
	}
	if req.ID < 0 {
		// etcd lease IDs are positive; a negative one could never be renewed by clientv3.
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	ttl := max(req.TTL, r.cfg.MinLeaseTTLSeconds)
	id, chosen := req.ID, req.ID == 0
	var (
		res *tesserapb.Result
		err error
	)
	for range 3 {
		if chosen {
			id = newLeaseID()
		}
		res, err = r.rng.GrantLease(ctx, id, ttl)
		if !chosen || !errors.Is(err, statemachine.ErrLeaseExists) {
			break
		}
	}
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseGrantResponse, error) {
			return pb.NewLeaseClient(cc).LeaseGrant(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	resp := &pb.LeaseGrantResponse{}
	if err := proto.Unmarshal(res.Response, resp); err != nil {
		return nil, ToGRPC(fmt.Errorf("router: decoding lease grant response: %w", err))
	}
	resp.Header = r.header(r.currentRevision(ctx))
	return resp, nil
}

// newLeaseID returns a random positive lease ID.
func newLeaseID() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := int64(binary.BigEndian.Uint64(b[:]) >> 1)
	if id == 0 {
		id = 1
	}
	return id
}

// currentRevision is the local replica's revision, for headers of responses
// that write no key.
func (r *Router) currentRevision(ctx context.Context) int64 {
	out, err := r.rng.Read(ctx, false, func(v *statemachine.View) (any, error) { return v.Revision(), nil })
	if err != nil {
		return 0
	}
	return out.(int64)
}

// LeaseRevoke serves Lease.LeaseRevoke: the lease and its keys go at one revision.
func (r *Router) LeaseRevoke(ctx context.Context, req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	res, err := r.rng.RevokeLease(ctx, req.ID)
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseRevokeResponse, error) {
			return pb.NewLeaseClient(cc).LeaseRevoke(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	resp := &pb.LeaseRevokeResponse{}
	if err := proto.Unmarshal(res.Response, resp); err != nil {
		return nil, ToGRPC(fmt.Errorf("router: decoding lease revoke response: %w", err))
	}
	resp.Header = r.header(resp.GetHeader().GetRevision())
	return resp, nil
}

// LeaseKeepAlive serves the keep-alive stream. Renewals need the range leader;
// on another node the stream is relayed to the leader's node.
func (r *Router) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	var relay pb.Lease_LeaseKeepAliveClient
	defer func() {
		if relay != nil {
			_ = relay.CloseSend()
		}
	}()
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		ttl, err := r.rng.RenewLease(ctx, req.ID)
		if errors.Is(err, statemachine.ErrLeaseNotFound) {
			// etcd answers an unknown lease with TTL 0, not an error.
			ttl, err = 0, nil
		}
		if err == nil {
			resp := &pb.LeaseKeepAliveResponse{Header: r.header(r.currentRevision(ctx)), ID: req.ID, TTL: ttl}
			if err := stream.Send(resp); err != nil {
				return err
			}
			continue
		}
		leader, ok := leaderToForward(ctx, err)
		if !ok {
			return ToGRPC(err)
		}
		if relay == nil {
			cc, cerr := r.nodes.Conn(ctx, leader)
			if cerr != nil {
				return ToGRPC(err)
			}
			relay, cerr = pb.NewLeaseClient(cc).LeaseKeepAlive(forwardedContext(ctx))
			if cerr != nil {
				return ToGRPC(err)
			}
		}
		if err := relay.Send(req); err != nil {
			return err
		}
		resp, err := relay.Recv()
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// LeaseTimeToLive serves Lease.LeaseTimeToLive. An unknown lease gets TTL -1,
// as in etcd.
func (r *Router) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	left, err := r.rng.LeaseRemaining(ctx, req.ID)
	if err != nil && !errors.Is(err, statemachine.ErrLeaseNotFound) {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseTimeToLiveResponse, error) {
			return pb.NewLeaseClient(cc).LeaseTimeToLive(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	type lease struct {
		rec  *tesserapb.LeaseRecord
		keys [][]byte
		rev  int64
	}
	out, rerr := r.rng.Read(ctx, true, func(v *statemachine.View) (any, error) {
		rec, keys, err := v.Lease(req.ID)
		if err != nil {
			return nil, err
		}
		return lease{rec: rec, keys: keys, rev: v.Revision()}, nil
	})
	if errors.Is(rerr, statemachine.ErrLeaseNotFound) || (rerr == nil && errors.Is(err, statemachine.ErrLeaseNotFound)) {
		return &pb.LeaseTimeToLiveResponse{Header: r.header(r.currentRevision(ctx)), ID: req.ID, TTL: -1}, nil
	}
	if rerr != nil {
		return nil, ToGRPC(rerr)
	}
	l := out.(lease)
	resp := &pb.LeaseTimeToLiveResponse{Header: r.header(l.rev), ID: req.ID, TTL: left, GrantedTTL: l.rec.TtlSeconds}
	if req.Keys {
		resp.Keys = l.keys
	}
	return resp, nil
}

// LeaseLeases serves Lease.LeaseLeases.
func (r *Router) LeaseLeases(ctx context.Context, _ *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	out, err := r.rng.Read(ctx, true, func(v *statemachine.View) (any, error) {
		recs, err := v.Leases()
		if err != nil {
			return nil, err
		}
		resp := &pb.LeaseLeasesResponse{Header: r.header(v.Revision())}
		for _, rec := range recs {
			resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: rec.Id})
		}
		return resp, nil
	})
	if err != nil {
		return nil, ToGRPC(err)
	}
	return out.(*pb.LeaseLeasesResponse), nil
}
