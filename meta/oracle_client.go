package meta

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// Batches reports how many calls to the oracle this node made (each asks
// the meta leader once, or its own allocator while it leads) and how many
// requests for revisions they carried.
func (c *OracleClient) Batches() (calls, requests int64) {
	return c.batcher.batches.Load(), c.batcher.requests.Load()
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
	callCtx, cancel := context.WithCancelCause(ctx)
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		c.watchLeader(callCtx, leader, cancel)
	}()
	defer func() {
		cancel(nil)
		<-watching
	}()
	resp, err := tesserapb.NewInternalClient(cc).GetRevisions(callCtx, &tesserapb.GetRevisionsRequest{Count: count})
	if err != nil {
		if code := status.Code(err); code == codes.FailedPrecondition || code == codes.Unavailable ||
			errors.Is(context.Cause(callCtx), errLeaderChanged) {
			// The node we asked no longer leads, is down, or was seen to
			// lose the leadership: ask again once this replica learns the
			// new leader.
			return 0, ErrNoLeader
		}
		return 0, err
	}
	if resp.Count != count || resp.First <= 1 {
		return 0, fmt.Errorf("meta: oracle answered %d revisions from %d, asked %d", resp.Count, resp.First, count)
	}
	return resp.First, nil
}

// errLeaderChanged ends a request to a meta leader that this replica no
// longer sees leading.
var errLeaderChanged = errors.New("meta: the meta leader changed")

// leaderPoll is how often a request to the meta leader looks whether the
// leader changed.
const leaderPoll = 20 * time.Millisecond

// watchLeader cancels ctx once this replica sees a leader other than leader,
// or none, until ctx ends. A leader cut off from the other members never
// answers, while they elect another: the request asks the new one instead
// of waiting out its timeout (the numbers the old one may still hand out
// become a gap).
func (c *OracleClient) watchLeader(ctx context.Context, leader uint64, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if now, _, ok := c.meta.Leader(); !ok || now != leader {
				cancel(errLeaderChanged)
				return
			}
		}
	}
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
