package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/proto/v3electionpb"
	"github.com/tesserakv/tessera/proto/v3lockpb"
)

// etcd's JSON gateway on the client port: the RPCs of KV, Lease, Watch,
// Maintenance, Cluster, Election and Lock at etcd's paths (POST
// /v3/kv/range, …), each request and answer the RPC's message in
// protobuf's JSON with the field names of the .proto files (bytes in
// base64, 64-bit integers as strings), as etcd's gRPC gateway has them;
// an error is a google.rpc Status ({"code":…,"message":…}) under the HTTP
// status of its gRPC code. Streaming calls are in gatewaystream.go.

var (
	gatewayIn  = protojson.UnmarshalOptions{}
	gatewayOut = protojson.MarshalOptions{UseProtoNames: true}
)

// gatewayMaxBody bounds a request's JSON (a request of --max-request-bytes
// grows by a third in base64, and by the JSON around it).
const gatewayMaxBody = 8 << 20

// unary serves one unary RPC over JSON.
func unary[Req, Resp proto.Message](az *authz, newReq func() Req, call func(context.Context, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeGatewayError(w, status.Error(codes.Unimplemented, "Method Not Allowed"), http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, gatewayMaxBody+1))
		if err != nil {
			writeGatewayError(w, status.Error(codes.InvalidArgument, err.Error()), 0)
			return
		}
		if len(body) > gatewayMaxBody {
			writeGatewayError(w, status.Errorf(codes.InvalidArgument, "request body larger than %d bytes", gatewayMaxBody), 0)
			return
		}
		req := newReq()
		if len(body) > 0 {
			if err := gatewayIn.Unmarshal(body, req); err != nil {
				writeGatewayError(w, status.Error(codes.InvalidArgument, err.Error()), 0)
				return
			}
		}
		ctx, err := az.check(r.Context(), req)
		if err != nil {
			writeGatewayError(w, err, 0)
			return
		}
		resp, err := call(ctx, req)
		if err != nil {
			writeGatewayError(w, err, 0)
			return
		}
		out, err := gatewayOut.Marshal(resp)
		if err != nil {
			writeGatewayError(w, status.Error(codes.Internal, err.Error()), 0)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	}
}

// writeGatewayError answers err as gRPC's JSON gateway does, under
// httpStatus, or the HTTP status of its gRPC code when 0.
func writeGatewayError(w http.ResponseWriter, err error, httpStatus int) {
	st := status.Convert(err)
	if httpStatus == 0 {
		httpStatus = httpStatusOf(st.Code())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_ = json.NewEncoder(w).Encode(struct {
		Code    codes.Code `json:"code"`
		Message string     `json:"message"`
	}{st.Code(), st.Message()})
}

// httpStatusOf maps a gRPC code to an HTTP status as gRPC's gateway does.
func httpStatusOf(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// handleGateway adds etcd's gateway paths to mux.
func handleGateway(mux *http.ServeMux, n *node.Node, az *authz, a *authService, m *maintenance, c *cluster, e *election, l *lock) {
	r := n.Router()
	handle := func(h http.HandlerFunc, paths ...string) {
		for _, p := range paths {
			mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
				if err := refusedWhileRestoring(n, p); err != nil {
					writeGatewayError(w, err, 0)
					return
				}
				h(w, r.WithContext(gatewayAuthContext(r)))
			})
		}
	}
	handle(unary(az, func() *pb.RangeRequest { return &pb.RangeRequest{} }, r.Range), "/v3/kv/range")
	handle(unary(az, func() *pb.PutRequest { return &pb.PutRequest{} }, r.Put), "/v3/kv/put")
	handle(unary(az, func() *pb.DeleteRangeRequest { return &pb.DeleteRangeRequest{} }, r.DeleteRange), "/v3/kv/deleterange")
	handle(unary(az, func() *pb.TxnRequest { return &pb.TxnRequest{} }, r.Txn), "/v3/kv/txn")
	handle(unary(az, func() *pb.CompactionRequest { return &pb.CompactionRequest{} }, r.Compact), "/v3/kv/compaction")
	handle(unary(az, func() *pb.LeaseGrantRequest { return &pb.LeaseGrantRequest{} }, r.LeaseGrant), "/v3/lease/grant")
	handle(unary(az, func() *pb.LeaseRevokeRequest { return &pb.LeaseRevokeRequest{} }, r.LeaseRevoke), "/v3/lease/revoke", "/v3/kv/lease/revoke")
	handle(unary(az, func() *pb.LeaseTimeToLiveRequest { return &pb.LeaseTimeToLiveRequest{} }, r.LeaseTimeToLive), "/v3/lease/timetolive", "/v3/kv/lease/timetolive")
	handle(unary(az, func() *pb.LeaseLeasesRequest { return &pb.LeaseLeasesRequest{} }, r.LeaseLeases), "/v3/lease/leases", "/v3/kv/lease/leases")
	handle(unary(az, func() *pb.StatusRequest { return &pb.StatusRequest{} }, m.Status), "/v3/maintenance/status")
	handle(unary(az, func() *pb.AlarmRequest { return &pb.AlarmRequest{} }, m.Alarm), "/v3/maintenance/alarm")
	handle(unary(az, func() *pb.DefragmentRequest { return &pb.DefragmentRequest{} }, m.Defragment), "/v3/maintenance/defragment")
	handle(unary(az, func() *pb.HashRequest { return &pb.HashRequest{} }, m.Hash), "/v3/maintenance/hash")
	handle(unary(az, func() *pb.HashKVRequest { return &pb.HashKVRequest{} }, m.HashKV), "/v3/maintenance/hashkv")
	handle(unary(az, func() *pb.MoveLeaderRequest { return &pb.MoveLeaderRequest{} }, m.MoveLeader), "/v3/maintenance/transfer-leadership")
	handle(unary(az, func() *pb.MemberListRequest { return &pb.MemberListRequest{} }, c.MemberList), "/v3/cluster/member/list")
	handle(unary(az, func() *pb.MemberAddRequest { return &pb.MemberAddRequest{} }, c.MemberAdd), "/v3/cluster/member/add")
	handle(unary(az, func() *pb.MemberRemoveRequest { return &pb.MemberRemoveRequest{} }, c.MemberRemove), "/v3/cluster/member/remove")
	handle(unary(az, func() *v3electionpb.CampaignRequest { return &v3electionpb.CampaignRequest{} }, e.Campaign), "/v3/election/campaign")
	handle(unary(az, func() *v3electionpb.ProclaimRequest { return &v3electionpb.ProclaimRequest{} }, e.Proclaim), "/v3/election/proclaim")
	handle(unary(az, func() *v3electionpb.LeaderRequest { return &v3electionpb.LeaderRequest{} }, e.Leader), "/v3/election/leader")
	handle(unary(az, func() *v3electionpb.ResignRequest { return &v3electionpb.ResignRequest{} }, e.Resign), "/v3/election/resign")
	handle(unary(az, func() *v3lockpb.LockRequest { return &v3lockpb.LockRequest{} }, l.Lock), "/v3/lock/lock")
	handle(unary(az, func() *v3lockpb.UnlockRequest { return &v3lockpb.UnlockRequest{} }, l.Unlock), "/v3/lock/unlock")
	for path, h := range map[string]http.HandlerFunc{
		"/v3/auth/enable":        unary(az, func() *pb.AuthEnableRequest { return &pb.AuthEnableRequest{} }, a.AuthEnable),
		"/v3/auth/disable":       unary(az, func() *pb.AuthDisableRequest { return &pb.AuthDisableRequest{} }, a.AuthDisable),
		"/v3/auth/status":        unary(az, func() *pb.AuthStatusRequest { return &pb.AuthStatusRequest{} }, a.AuthStatus),
		"/v3/auth/authenticate":  unary(az, func() *pb.AuthenticateRequest { return &pb.AuthenticateRequest{} }, a.Authenticate),
		"/v3/auth/user/add":      unary(az, func() *pb.AuthUserAddRequest { return &pb.AuthUserAddRequest{} }, a.UserAdd),
		"/v3/auth/user/get":      unary(az, func() *pb.AuthUserGetRequest { return &pb.AuthUserGetRequest{} }, a.UserGet),
		"/v3/auth/user/list":     unary(az, func() *pb.AuthUserListRequest { return &pb.AuthUserListRequest{} }, a.UserList),
		"/v3/auth/user/delete":   unary(az, func() *pb.AuthUserDeleteRequest { return &pb.AuthUserDeleteRequest{} }, a.UserDelete),
		"/v3/auth/user/changepw": unary(az, func() *pb.AuthUserChangePasswordRequest { return &pb.AuthUserChangePasswordRequest{} }, a.UserChangePassword),
		"/v3/auth/user/grant":    unary(az, func() *pb.AuthUserGrantRoleRequest { return &pb.AuthUserGrantRoleRequest{} }, a.UserGrantRole),
		"/v3/auth/user/revoke":   unary(az, func() *pb.AuthUserRevokeRoleRequest { return &pb.AuthUserRevokeRoleRequest{} }, a.UserRevokeRole),
		"/v3/auth/role/add":      unary(az, func() *pb.AuthRoleAddRequest { return &pb.AuthRoleAddRequest{} }, a.RoleAdd),
		"/v3/auth/role/get":      unary(az, func() *pb.AuthRoleGetRequest { return &pb.AuthRoleGetRequest{} }, a.RoleGet),
		"/v3/auth/role/list":     unary(az, func() *pb.AuthRoleListRequest { return &pb.AuthRoleListRequest{} }, a.RoleList),
		"/v3/auth/role/delete":   unary(az, func() *pb.AuthRoleDeleteRequest { return &pb.AuthRoleDeleteRequest{} }, a.RoleDelete),
		"/v3/auth/role/grant":    unary(az, func() *pb.AuthRoleGrantPermissionRequest { return &pb.AuthRoleGrantPermissionRequest{} }, a.RoleGrantPermission),
		"/v3/auth/role/revoke":   unary(az, func() *pb.AuthRoleRevokePermissionRequest { return &pb.AuthRoleRevokePermissionRequest{} }, a.RoleRevokePermission),
	} {
		handle(h, path)
	}
	handleGatewayStreams(handle, az, n.Hub(), r, m, e)
}

// gatewayAuthContext is the request's context with its Authorization
// header as the call's token, where etcd's gateway passes it.
func gatewayAuthContext(r *http.Request) context.Context {
	tok := r.Header.Get("Authorization")
	if tok == "" {
		return r.Context()
	}
	return metadata.NewIncomingContext(r.Context(), metadata.Pairs(rpctypes.TokenFieldNameSwagger, tok))
}
