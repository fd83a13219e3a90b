package router

import (
	"context"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Nodes finds other nodes; the router needs only a connection to a node.
// Nodes are named by node ID or by the ID of a replica they hold (see
// internal/replicaid).
type Nodes interface {
	Conn(ctx context.Context, nodeID uint64) (*grpc.ClientConn, error)
}

// forwardedContext marks an outgoing call as forwarded once more than the
// request being served (see forwardHops).
func forwardedContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, forwardedKey, strconv.Itoa(forwardHops(ctx)+1))
}

// forward re-sends a request to the range leader when err says this replica is
// not it. handled is false when there is nowhere to forward to; the caller then
// returns err as it is.
func forward[T any](r *Router, ctx context.Context, err error, call func(context.Context, *grpc.ClientConn) (T, error)) (resp T, ferr error, handled bool) {
	leader, ok := leaderToForward(ctx, err)
	if !ok {
		return resp, err, false
	}
	cc, cerr := r.nodes.Conn(ctx, leader)
	if cerr != nil {
		return resp, err, false
	}
	resp, ferr = call(forwardedContext(ctx), cc)
	return resp, ferr, true
}

// ForwardedContext marks an outgoing call made while serving the request in
// ctx as forwarded once more (for the server's own forwarding).
func ForwardedContext(ctx context.Context) context.Context { return forwardedContext(ctx) }

// MayForward reports whether the request in ctx may be forwarded again.
func MayForward(ctx context.Context) bool { return !isForwarded(ctx) }
