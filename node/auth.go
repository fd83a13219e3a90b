package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// authSpreadTimeout bounds how long a change of the auth state waits for
// the other nodes to apply it (a node that does not answer meanwhile is
// down or cut off: it serves nothing that needs the meta leader).
const authSpreadTimeout = 5 * time.Second

// Auth is the auth state this node checks requests against, as its meta
// replica last applied it (never nil).
func (s *Node) Auth() *auth.Snapshot {
	if a := s.authState.Load(); a != nil {
		return a
	}
	return auth.Compile(nil)
}

// FreshAuth is Auth once this node's meta replica has applied everything
// committed before the call (a linearizable read of the meta range), as
// etcd reads its auth store before checking a password.
func (s *Node) FreshAuth(ctx context.Context) (*auth.Snapshot, error) {
	if _, err := s.meta.Read(ctx, true, func(*tesserapb.MetaState) (any, error) { return nil, nil }); err != nil {
		return nil, metaError(err)
	}
	return s.Auth(), nil
}

// setAuth is the meta replica's onAuth: it runs as changes apply, in order.
func (s *Node) setAuth(a *auth.Snapshot) {
	s.authState.Store(a)
	s.authMu.Lock()
	close(s.authChanged)
	s.authChanged = make(chan struct{})
	s.authMu.Unlock()
}

// waitAuth waits until this node's auth state has seen rev changes.
func (s *Node) waitAuth(ctx context.Context, rev uint64) error {
	for {
		s.authMu.Lock()
		changed := s.authChanged
		s.authMu.Unlock()
		if s.Auth().Changes() >= rev {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ChangeAuth proposes a change of the auth state through the meta range
// and returns its result. A change that applied returns once every node
// that answers within authSpreadTimeout has applied it too, so that a
// revoked permission is refused on every node from then on.
func (s *Node) ChangeAuth(ctx context.Context, c *tesserapb.AuthCommand) (tesserapb.AuthResult, error) {
	res, err := s.meta.ProposeAuth(ctx, c)
	if err != nil {
		return res, metaError(err)
	}
	if res != tesserapb.AuthResult_AUTH_OK {
		return res, nil
	}
	rev := s.Auth().Changes() // the proposal applied here before it returned
	nodes, err := s.directory.Nodes(ctx)
	if err != nil {
		return res, nil
	}
	spread, cancel := context.WithTimeout(ctx, authSpreadTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n.NodeId == s.replicaID {
			continue
		}
		wg.Add(1)
		go func(id uint64) {
			defer wg.Done()
			cc, err := s.directory.Conn(spread, id)
			if err != nil {
				return
			}
			if _, err := tesserapb.NewInternalClient(cc).WaitAuth(spread, &tesserapb.WaitAuthRequest{Changes: rev}); err != nil {
				s.log.Debug("a node did not confirm an auth change", "node", id, "err", err)
			}
		}(n.NodeId)
	}
	wg.Wait()
	return res, nil
}

// WaitAuth serves Internal.WaitAuth.
func (i *internalService) WaitAuth(ctx context.Context, req *tesserapb.WaitAuthRequest) (*tesserapb.WaitAuthResponse, error) {
	if err := i.s.waitAuth(ctx, req.Changes); err != nil {
		return nil, err
	}
	return &tesserapb.WaitAuthResponse{}, nil
}

// AuthorizeWatches sets what the watch hub asks before it creates a watch
// (nil: nothing). Call it before Start.
func (s *Node) AuthorizeWatches(f func(ctx context.Context, key, rangeEnd []byte) error) {
	s.watchAuth = f
}

// authorizeWatch is the hub's Authorize.
func (s *Node) authorizeWatch(ctx context.Context, key, rangeEnd []byte) error {
	if s.watchAuth == nil {
		return nil
	}
	return s.watchAuth(ctx, key, rangeEnd)
}

// JWT is the node's JWT token provider (--auth-token jwt,…), nil for
// simple tokens.
func (s *Node) JWT() *auth.JWT { return s.jwt }

// metaError is etcd's answer to a meta range request that did not go
// through: a timeout (the meta range may be electing a leader), no
// leader, or a retryable Unavailable.
func metaError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, dragonboat.ErrTimeout), errors.Is(err, dragonboat.ErrTimeoutTooSmall):
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, meta.ErrNoLeader), errors.Is(err, dragonboat.ErrShardNotReady):
		return rpctypes.ErrGRPCNoLeader
	}
	return status.Errorf(codes.Unavailable, "tessera: the meta range: %v; retry", err)
}
