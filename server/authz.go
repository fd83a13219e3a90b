package server

import (
	"context"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/node"
)

// authz enforces etcd's access control on every client request, through
// gRPC or the gateway: who the caller is (a token, or the CN of its
// certificate) and whether that user may do what the request does, checked
// against the auth state this node's meta replica has applied. With auth
// off it costs one atomic load.
type authz struct {
	n      *node.Node
	certCN bool // --client-cert-auth: a verified certificate's CN is the user
}

// errJoinOnPeerPort refuses a join on the client port of a cluster whose
// members talk over peer TLS: a node joins it showing its peer certificate.
var errJoinOnPeerPort = status.Error(codes.FailedPrecondition, "tessera: this cluster's members talk over peer TLS: a node joins it with https peer URLs and a peer certificate (--peer-cert-file, --peer-key-file, or --peer-auto-tls)")

// exemptMethod: health checks need no caller.
func exemptMethod(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/")
}

// ctlMethods are the Internal calls `tessera ctl` makes: with auth on, a
// root user may make them too.
var ctlMethods = map[string]bool{
	"/tesserapb.Internal/ListRanges":   true,
	"/tesserapb.Internal/ListNodes":    true,
	"/tesserapb.Internal/SplitRange":   true,
	"/tesserapb.Internal/Decommission": true,
}

// internal authorizes a call of the node-to-node service on the client
// port (the nodes call each other on the peer port): with auth on, only
// root's calls of the ctl's methods, and JoinCluster (a new node's first
// call, to a member's client URL), pass.
func (a *authz) internal(ctx context.Context, method string) (context.Context, error) {
	if method == "/tesserapb.Internal/JoinCluster" && a.n.PeerSecure() {
		return ctx, errJoinOnPeerPort
	}
	snap := a.n.Auth()
	if !snap.Enabled() || method == "/tesserapb.Internal/JoinCluster" {
		return ctx, nil
	}
	if !ctlMethods[method] {
		return ctx, rpctypes.ErrGRPCPermissionDenied
	}
	ctx, snap, err := a.caller(ctx)
	if err != nil {
		return ctx, err
	}
	return ctx, snap.Admin(auth.UserOf(ctx))
}

func isInternal(method string) bool { return strings.HasPrefix(method, "/tesserapb.Internal/") }

// caller returns ctx with the caller recorded (auth.UserOf), or the error
// of an invalid token. With auth off ctx is returned as it is.
func (a *authz) caller(ctx context.Context) (context.Context, *auth.Snapshot, error) {
	snap := a.n.Auth()
	if !snap.Enabled() {
		return ctx, snap, nil
	}
	user, err := auth.Caller(ctx, snap, time.Now(), a.certCN, a.n.JWT())
	if err != nil {
		return ctx, snap, err
	}
	if user != "" {
		ctx = auth.WithUser(ctx, user)
	}
	return ctx, snap, nil
}

// check authorizes one request, returning ctx with its caller recorded.
func (a *authz) check(ctx context.Context, req any) (context.Context, error) {
	switch req.(type) {
	case *pb.AuthenticateRequest, *pb.AuthStatusRequest:
		return ctx, nil
	}
	ctx, snap, err := a.caller(ctx)
	if err != nil || !snap.Enabled() {
		return ctx, err
	}
	user := auth.UserOf(ctx)
	switch r := req.(type) {
	case *pb.RangeRequest:
		return ctx, snap.CanRead(user, r.Key, r.RangeEnd)
	case *pb.PutRequest:
		return ctx, a.checkPut(ctx, snap, user, r)
	case *pb.DeleteRangeRequest:
		return ctx, checkDelete(snap, user, r)
	case *pb.TxnRequest:
		return ctx, a.checkTxn(ctx, snap, user, r)
	case *pb.CompactionRequest, *pb.DefragmentRequest, *pb.HashRequest, *pb.HashKVRequest, *pb.MoveLeaderRequest,
		*pb.DowngradeRequest, *pb.SnapshotRequest,
		*pb.MemberAddRequest, *pb.MemberRemoveRequest, *pb.MemberUpdateRequest, *pb.MemberPromoteRequest:
		return ctx, snap.Admin(user)
	case *pb.AlarmRequest:
		if r.Action != pb.AlarmRequest_GET {
			return ctx, snap.Admin(user)
		}
		return ctx, requireUser(user)
	case *pb.StatusRequest:
		return ctx, requireUser(user)
	case *pb.LeaseRevokeRequest:
		return ctx, a.checkLeaseKeys(ctx, snap, user, r.ID, true)
	case *pb.LeaseTimeToLiveRequest:
		return ctx, a.checkLeaseKeys(ctx, snap, user, r.ID, false)
	case *pb.LeaseLeasesRequest:
		if snap.Admin(user) == nil {
			return ctx, nil
		}
		leases, err := a.n.Router().LeaseLeases(ctx, r)
		if err != nil {
			return ctx, err
		}
		for _, l := range leases.Leases {
			if err := a.checkLeaseKeys(ctx, snap, user, l.ID, false); err != nil {
				return ctx, err
			}
		}
	}
	return ctx, nil
}

// requireUser is etcd's requireAuthInfo: any authenticated user.
func requireUser(user string) error {
	if user == "" {
		return rpctypes.ErrGRPCUserEmpty
	}
	return nil
}

func (a *authz) checkPut(ctx context.Context, snap *auth.Snapshot, user string, r *pb.PutRequest) error {
	if err := snap.CanWrite(user, r.Key, nil); err != nil {
		return err
	}
	// A lease whose keys the user may not write could not be revoked by
	// it: attaching it to another key is refused, as etcd does.
	if r.Lease != 0 {
		if err := a.checkLeaseKeys(ctx, snap, user, r.Lease, true); err != nil {
			return err
		}
	}
	if r.PrevKv {
		return snap.CanRead(user, r.Key, nil)
	}
	return nil
}

func checkDelete(snap *auth.Snapshot, user string, r *pb.DeleteRangeRequest) error {
	if err := snap.CanWrite(user, r.Key, r.RangeEnd); err != nil {
		return err
	}
	if r.PrevKv {
		return snap.CanRead(user, r.Key, r.RangeEnd)
	}
	return nil
}

// checkTxn: every compare needs read, and both branches are checked
// whichever runs, as etcd does.
func (a *authz) checkTxn(ctx context.Context, snap *auth.Snapshot, user string, r *pb.TxnRequest) error {
	for _, c := range r.Compare {
		if err := snap.CanRead(user, c.Key, c.RangeEnd); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if o.RequestRange != nil {
					err = snap.CanRead(user, o.RequestRange.Key, o.RequestRange.RangeEnd)
				}
			case *pb.RequestOp_RequestPut:
				if o.RequestPut != nil {
					err = a.checkPut(ctx, snap, user, o.RequestPut)
				}
			case *pb.RequestOp_RequestDeleteRange:
				if o.RequestDeleteRange != nil {
					err = checkDelete(snap, user, o.RequestDeleteRange)
				}
			case *pb.RequestOp_RequestTxn:
				if o.RequestTxn != nil {
					err = a.checkTxn(ctx, snap, user, o.RequestTxn)
				}
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// checkLeaseKeys: a user other than root needs write (or read) permission
// on every key attached to the lease. An unknown lease has no keys: the
// call itself then answers etcd's "requested lease not found".
func (a *authz) checkLeaseKeys(ctx context.Context, snap *auth.Snapshot, user string, id int64, write bool) error {
	if err := requireUser(user); err != nil {
		return err
	}
	if snap.Admin(user) == nil {
		return nil
	}
	ttl, err := a.n.Router().LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id, Keys: true})
	if err != nil {
		return nil
	}
	for _, k := range ttl.Keys {
		check := snap.CanRead
		if write {
			check = snap.CanWrite
		}
		if err := check(user, k, nil); err != nil {
			return err
		}
	}
	return nil
}

// unary is the gRPC interceptor's half.
func (a *authz) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo) (context.Context, error) {
	switch {
	case exemptMethod(info.FullMethod):
		return ctx, nil
	case isInternal(info.FullMethod):
		return a.internal(ctx, info.FullMethod)
	}
	return a.check(ctx, req)
}

// stream is the stream interceptor's half: the caller is worked out once
// for the stream; Snapshot needs root, Watch is checked per watch by the
// hub (watchAllowed).
func (a *authz) stream(ss grpc.ServerStream, info *grpc.StreamServerInfo) (grpc.ServerStream, error) {
	if exemptMethod(info.FullMethod) {
		return ss, nil
	}
	if isInternal(info.FullMethod) {
		_, err := a.internal(ss.Context(), info.FullMethod)
		return ss, err
	}
	ctx, snap, err := a.caller(ss.Context())
	if err != nil {
		return ss, err
	}
	if info.FullMethod == "/etcdserverpb.Maintenance/Snapshot" {
		if err := snap.Admin(auth.UserOf(ctx)); err != nil {
			return ss, err
		}
	}
	if !snap.Enabled() {
		return ss, nil
	}
	cs := &callerStream{ServerStream: ss, ctx: ctx}
	if info.FullMethod == "/etcdserverpb.Lease/LeaseKeepAlive" {
		// Each renewal needs write permission on the lease's keys, as
		// etcd's checkLeaseRenew.
		cs.check = func(m any) error {
			if r, ok := m.(*pb.LeaseKeepAliveRequest); ok {
				return a.checkLeaseKeys(cs.ctx, a.n.Auth(), auth.UserOf(cs.ctx), r.ID, true)
			}
			return nil
		}
	}
	return cs, nil
}

// callerStream is a stream whose context records its caller, and whose
// received messages pass check, when set.
type callerStream struct {
	grpc.ServerStream
	ctx   context.Context
	check func(m any) error
}

func (s *callerStream) Context() context.Context { return s.ctx }

func (s *callerStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.check != nil {
		return s.check(m)
	}
	return nil
}

// watchAllowed is the hub's Authorize: read permission on the watched keys.
func (a *authz) watchAllowed(ctx context.Context, key, rangeEnd []byte) error {
	ctx, snap, err := a.caller(ctx)
	if err != nil {
		return err
	}
	return snap.CanRead(auth.UserOf(ctx), key, rangeEnd)
}

// forCaller returns ctx for a call this node makes to itself on behalf of
// the caller recorded in ctx (Election and Lock run clientv3 against the
// node): a token of the caller's, so that the inner calls are checked as
// the caller's own.
func (a *authz) forCaller(ctx context.Context) context.Context {
	snap := a.n.Auth()
	user := auth.UserOf(ctx)
	if !snap.Enabled() || user == "" {
		return ctx
	}
	tok, err := snap.MintToken(user, time.Now(), time.Minute)
	if err != nil {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, tok)
}
