package router

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// peers keeps client connections to the other nodes, found through the member
// attributes each node records in the range (MemberAttrsCommand).
type peers struct {
	rng Range

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by target address; guarded by mu
}

func newPeers(rng Range) *peers { return &peers{rng: rng, conns: map[string]*grpc.ClientConn{}} }

func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for target, cc := range p.conns {
		_ = cc.Close()
		delete(p.conns, target)
	}
}

// memberWait bounds how long conn waits for a just-started member to publish
// its client address.
const memberWait = 2 * time.Second

// conn returns a connection to the node holding replicaID.
func (p *peers) conn(ctx context.Context, replicaID uint64) (*grpc.ClientConn, error) {
	var target string
	deadline := time.Now().Add(memberWait)
	for target == "" {
		out, err := p.rng.Read(ctx, false, func(v *statemachine.View) (any, error) { return v.Members() })
		if err != nil {
			return nil, err
		}
		for _, m := range out.([]*tesserapb.MemberAttrs) {
			if m.ReplicaId == replicaID && len(m.ClientUrls) > 0 {
				target = hostPort(m.ClientUrls[0])
				break
			}
		}
		if target != "" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("router: no client address known for replica %d", replicaID)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc, ok := p.conns[target]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.conns[target] = cc
	return cc, nil
}

// hostPort strips the scheme of a client URL ("http://127.0.0.1:2379").
func hostPort(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		url = url[i+3:]
	}
	return strings.TrimSuffix(url, "/")
}

// forwardedContext marks an outgoing call as forwarded.
func forwardedContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, forwardedKey, "1")
}

// forward re-sends a request to the range leader when err says this replica is
// not it. handled is false when there is nowhere to forward to; the caller then
// returns err as it is.
func forward[T any](r *Router, ctx context.Context, err error, call func(context.Context, *grpc.ClientConn) (T, error)) (resp T, ferr error, handled bool) {
	leader, ok := leaderToForward(ctx, err)
	if !ok {
		return resp, err, false
	}
	cc, cerr := r.peers.conn(ctx, leader)
	if cerr != nil {
		return resp, err, false
	}
	resp, ferr = call(forwardedContext(ctx), cc)
	return resp, ferr, true
}
