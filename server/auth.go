package server

import (
	"context"
	"crypto/rand"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// authService serves etcd's Auth service. Changes go through the meta
// range (node.ChangeAuth); reads and password checks use the state this
// node's meta replica applied. Every call but Authenticate and AuthStatus
// needs the root role once auth is on (UserGet of oneself and RoleGet of
// one's own role excepted), as etcd's.
type authService struct {
	pb.UnimplementedAuthServer
	n      *node.Node
	authz  *authz
	cost   int
	ttl    time.Duration
	header func() *pb.ResponseHeader
}

// errNoPasswordUser is etcd's answer to a password given for a user made
// without one.
var errNoPasswordUser = status.Error(codes.Unknown, "auth: authentication failed, password was given for no password user")

// authResultErrors maps the meta range's refusals to etcd's errors.
var authResultErrors = map[tesserapb.AuthResult]error{
	tesserapb.AuthResult_AUTH_USER_EMPTY:             rpctypes.ErrGRPCUserEmpty,
	tesserapb.AuthResult_AUTH_USER_EXISTS:            rpctypes.ErrGRPCUserAlreadyExist,
	tesserapb.AuthResult_AUTH_USER_NOT_FOUND:         rpctypes.ErrGRPCUserNotFound,
	tesserapb.AuthResult_AUTH_ROLE_EMPTY:             rpctypes.ErrGRPCRoleEmpty,
	tesserapb.AuthResult_AUTH_ROLE_EXISTS:            rpctypes.ErrGRPCRoleAlreadyExist,
	tesserapb.AuthResult_AUTH_ROLE_NOT_FOUND:         rpctypes.ErrGRPCRoleNotFound,
	tesserapb.AuthResult_AUTH_ROLE_NOT_GRANTED:       rpctypes.ErrGRPCRoleNotGranted,
	tesserapb.AuthResult_AUTH_PERMISSION_NOT_GRANTED: rpctypes.ErrGRPCPermissionNotGranted,
	tesserapb.AuthResult_AUTH_ROOT_USER_MISSING:      rpctypes.ErrGRPCRootUserNotExist,
	tesserapb.AuthResult_AUTH_ROOT_ROLE_MISSING:      rpctypes.ErrGRPCRootRoleNotExist,
	tesserapb.AuthResult_AUTH_INVALID_AUTH_MGMT:      rpctypes.ErrGRPCInvalidAuthMgmt,
	tesserapb.AuthResult_AUTH_NO_PASSWORD_USER:       errNoPasswordUser,
}

// change checks that the caller is root (with auth on), proposes c, and
// maps its result to etcd's answer.
func (a *authService) change(ctx context.Context, c *tesserapb.AuthCommand) (*pb.ResponseHeader, error) {
	ctx, snap, err := a.authz.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := snap.Admin(auth.UserOf(ctx)); err != nil {
		return nil, err
	}
	res, err := a.n.ChangeAuth(ctx, c)
	if err != nil {
		return nil, err
	}
	if e := authResultErrors[res]; e != nil {
		return nil, e
	}
	return a.header(), nil
}

// hash makes a password's bcrypt hash here, before the change is proposed
// (as etcd does: whatever hash a client sent is not used).
func (a *authService) hash(password string) ([]byte, error) {
	return bcrypt.GenerateFromPassword([]byte(password), a.cost)
}

func (a *authService) AuthEnable(ctx context.Context, _ *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ENABLE, TokenKey: key})
	if err != nil {
		return nil, err
	}
	return &pb.AuthEnableResponse{Header: h}, nil
}

func (a *authService) AuthDisable(ctx context.Context, _ *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_DISABLE})
	if err != nil {
		return nil, err
	}
	return &pb.AuthDisableResponse{Header: h}, nil
}

func (a *authService) AuthStatus(context.Context, *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	snap := a.n.Auth()
	return &pb.AuthStatusResponse{Header: a.header(), Enabled: snap.Enabled(), AuthRevision: snap.Revision()}, nil
}

func (a *authService) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	snap, err := a.n.FreshAuth(ctx)
	if err != nil {
		return nil, err
	}
	if err := snap.CheckPassword(r.Name, r.Password); err != nil {
		return nil, err
	}
	var tok string
	if j := a.n.JWT(); j != nil {
		tok, err = j.Mint(r.Name, snap.Revision(), time.Now())
	} else {
		tok, err = snap.MintToken(r.Name, time.Now(), a.ttl)
	}
	if err != nil {
		return nil, err
	}
	return &pb.AuthenticateResponse{Header: a.header(), Token: tok}, nil
}

func (a *authService) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	c := &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_ADD, User: r.Name, NoPassword: r.Options.GetNoPassword()}
	if !c.NoPassword && r.Name != "" {
		hash, err := a.hash(r.Password)
		if err != nil {
			return nil, err
		}
		c.PasswordHash = hash
	}
	h, err := a.change(ctx, c)
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserAddResponse{Header: h}, nil
}

func (a *authService) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_DELETE, User: r.Name})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserDeleteResponse{Header: h}, nil
}

func (a *authService) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	hash, err := a.hash(r.Password)
	if err != nil {
		return nil, err
	}
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_CHANGE_PASSWORD, User: r.Name, PasswordHash: hash})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserChangePasswordResponse{Header: h}, nil
}

func (a *authService) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	// A role granted twice is etcd's success without a change.
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_GRANT_ROLE, User: r.User, Role: r.Role})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserGrantRoleResponse{Header: h}, nil
}

func (a *authService) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_USER_REVOKE_ROLE, User: r.Name, Role: r.Role})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserRevokeRoleResponse{Header: h}, nil
}

func (a *authService) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_ADD, Role: r.Name})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleAddResponse{Header: h}, nil
}

func (a *authService) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_DELETE, Role: r.Role})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleDeleteResponse{Header: h}, nil
}

func (a *authService) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	if r.Perm == nil {
		return nil, rpctypes.ErrGRPCPermissionNotGiven
	}
	p := &tesserapb.AuthPermission{Type: int32(r.Perm.PermType), Key: r.Perm.Key, RangeEnd: r.Perm.RangeEnd}
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_GRANT_PERMISSION, Role: r.Name, Permission: p})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleGrantPermissionResponse{Header: h}, nil
}

func (a *authService) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	p := &tesserapb.AuthPermission{Key: r.Key, RangeEnd: r.RangeEnd}
	h, err := a.change(ctx, &tesserapb.AuthCommand{Op: tesserapb.AuthCommand_ROLE_REVOKE_PERMISSION, Role: r.Role, Permission: p})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleRevokePermissionResponse{Header: h}, nil
}

// reader returns the auth state for a read, after checking that the
// caller is root or passes self (reading its own user or role).
func (a *authService) reader(ctx context.Context, self func(snap *auth.Snapshot, user string) bool) (*tesserapb.AuthState, error) {
	ctx, snap, err := a.authz.caller(ctx)
	if err != nil {
		return nil, err
	}
	user := auth.UserOf(ctx)
	if err := snap.Admin(user); err != nil && (self == nil || !self(snap, user)) {
		return nil, err
	}
	return snap.State(), nil
}

func (a *authService) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	st, err := a.reader(ctx, func(_ *auth.Snapshot, user string) bool { return user != "" && user == r.Name })
	if err != nil {
		return nil, err
	}
	for _, u := range st.Users {
		if u.Name == r.Name {
			return &pb.AuthUserGetResponse{Header: a.header(), Roles: append([]string(nil), u.Roles...)}, nil
		}
	}
	return nil, rpctypes.ErrGRPCUserNotFound
}

func (a *authService) UserList(ctx context.Context, _ *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	st, err := a.reader(ctx, nil)
	if err != nil {
		return nil, err
	}
	resp := &pb.AuthUserListResponse{Header: a.header(), Users: []string{}}
	for _, u := range st.Users {
		resp.Users = append(resp.Users, u.Name)
	}
	return resp, nil
}

func (a *authService) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	st, err := a.reader(ctx, func(snap *auth.Snapshot, user string) bool { return snap.HasRole(user, r.Role) })
	if err != nil {
		return nil, err
	}
	if r.Role == auth.Root {
		for _, role := range st.Roles {
			if role.Name == auth.Root {
				// etcd shows root's implicit permission on everything.
				return &pb.AuthRoleGetResponse{Header: a.header(), Perm: []*authpb.Permission{{PermType: authpb.READWRITE, Key: []byte{}, RangeEnd: []byte{0}}}}, nil
			}
		}
	}
	for _, role := range st.Roles {
		if role.Name == r.Role {
			resp := &pb.AuthRoleGetResponse{Header: a.header()}
			for _, p := range role.Permissions {
				resp.Perm = append(resp.Perm, &authpb.Permission{PermType: authpb.Permission_Type(p.Type), Key: p.Key, RangeEnd: p.RangeEnd})
			}
			return resp, nil
		}
	}
	return nil, rpctypes.ErrGRPCRoleNotFound
}

func (a *authService) RoleList(ctx context.Context, _ *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	st, err := a.reader(ctx, nil)
	if err != nil {
		return nil, err
	}
	resp := &pb.AuthRoleListResponse{Header: a.header(), Roles: []string{}}
	for _, r := range st.Roles {
		resp.Roles = append(resp.Roles, r.Name)
	}
	return resp, nil
}
