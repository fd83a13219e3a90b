package meta

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// OracleClient is this node's access to the revision oracle: it batches the
// callers waiting now into one request to the meta leader (in process when
// this node leads the meta range, over gRPC otherwise).
type OracleClient struct {
	meta      metaRaft
	allocator *Allocator
	dir       *Directory
	batcher   *revisionBatcher
}

// NewOracleClient returns the node's oracle client. allocator is this node's
// allocator, used while this node leads the meta range; the batching
// goroutine runs on a child of stopper (the node's).
func NewOracleClient(meta metaRaft, allocator *Allocator, dir *Directory, stopper *stop.Stopper) *OracleClient {
	c := &OracleClient{meta: meta, allocator: allocator, dir: dir}
	c.batcher = newRevisionBatcher(c.fetch, stopper.NewChild())
	return c
}

// NextN returns the first of count consecutive revisions, each above every
// revision handed out before the call.
func (c *OracleClient) NextN(ctx context.Context, count int64) (int64, error) {
	return c.batcher.get(ctx, count)
}

// Current returns a revision at or above every revision handed out before the
// call began, taking none: what a linearizable read reads at. Like NextN, it is
// confirmed by the meta leader after the call began.
func (c *OracleClient) Current(ctx context.Context) (int64, error) {
	first, err := c.batcher.get(ctx, 0)
	return first - 1, err
}

func (c *OracleClient) fetch(ctx context.Context, count int64) (int64, error) {
	var first int64
	err := withRetries(ctx, func() error {
		var err error
		first, err = c.fetchOnce(ctx, count)
		return err
	})
	return first, err
}

func (c *OracleClient) fetchOnce(ctx context.Context, count int64) (int64, error) {
	leader, _, ok := c.meta.Leader()
	if !ok {
		return 0, ErrNoLeader
	}
	if leader == c.meta.NodeID() {
		return c.allocator.Allocate(ctx, count)
	}
	cc, err := c.dir.Conn(ctx, leader)
	if err != nil {
		return 0, err
	}
	resp, err := tesserapb.NewInternalClient(cc).GetRevisions(ctx, &tesserapb.GetRevisionsRequest{Count: count})
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.Unavailable {
			// The node we asked no longer leads, or is down: ask again
			// once this replica learns the new leader.
			return 0, ErrNoLeader
		}
		return 0, err
	}
	if resp.Count != count || resp.First <= 1 {
		return 0, fmt.Errorf("meta: oracle answered %d revisions from %d, asked %d", resp.Count, resp.First, count)
	}
	return resp.First, nil
}

// InternalServer serves tesserapb.Internal for other nodes.
type InternalServer struct {
	tesserapb.UnimplementedInternalServer
	batcher *revisionBatcher
}

// NewInternalServer serves revisions from this node's allocator, combining
// concurrent requests from all nodes into one allocation; the batching
// goroutine runs on a child of stopper (the node's).
func NewInternalServer(allocator *Allocator, stopper *stop.Stopper) *InternalServer {
	return &InternalServer{batcher: newRevisionBatcher(allocator.Allocate, stopper.NewChild())}
}

// GetRevisions serves tesserapb.Internal.GetRevisions.
func (s *InternalServer) GetRevisions(ctx context.Context, req *tesserapb.GetRevisionsRequest) (*tesserapb.GetRevisionsResponse, error) {
	if req.Count < 0 || req.Count > 1<<20 {
		return nil, status.Errorf(codes.InvalidArgument, "revision count %d out of range", req.Count)
	}
	first, err := s.batcher.get(ctx, req.Count)
	if err != nil {
		var nl *NotLeaderError
		if errors.As(err, &nl) || errors.Is(err, ErrNoLeader) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &tesserapb.GetRevisionsResponse{First: first, Count: req.Count}, nil
}
