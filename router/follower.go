package router

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// Linearizable reads on any replica. etcd serves a linearizable read on a
// follower by asking the leader for its commit index (ReadIndex) and reading
// locally once it has applied as much. Tessera does the same with its fence
// (DESIGN.md, Revisions 3): the range leader raises its fence to the read's
// revision, waits for the writes at or below it, confirms its leadership and
// answers its applied index (Internal.FenceRange); this replica waits until
// it has applied that index and reads locally. The answer never crosses the
// network twice, and concurrent reads of one range share one FenceRange call
// at the highest of their revisions, as etcd's ReadIndex requests share one
// heartbeat round.

// fenceCallTimeout bounds one FenceRange call, which serves many readers.
const fenceCallTimeout = 5 * time.Second

// readAt runs fn on a view of rng in which rev is readable and complete: on
// this replica when it leads the range, otherwise here after the leader's
// FenceRange. It returns the replica's *NotLeaderError (for the caller to
// forward the request) when the leader cannot be asked.
func (r *Router) readAt(ctx context.Context, rng Range, rev int64, fn func(*statemachine.View) (any, error)) (any, error) {
	out, err := rng.ReadAt(ctx, rev, fn)
	leader, ok := leaderOf(err)
	if !ok {
		return out, err
	}
	index, ferr := r.fences.fence(ctx, r, rng.RangeID(), leader, rev)
	if ferr != nil {
		r.cfg.Logger.Debug("fencing a range on its leader", "range", rng.RangeID(), "leader", leader, "err", ferr)
		return nil, err
	}
	return rng.ReadAfter(ctx, index, rev, fn)
}

// FenceRange serves Internal.FenceRange on the range's leader.
func (r *Router) FenceRange(ctx context.Context, req *tesserapb.FenceRangeRequest) (*tesserapb.FenceRangeResponse, error) {
	rng := r.ranges.byID(req.RangeId)
	if rng == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: range %d is not on this node", req.RangeId)
	}
	if req.Revision <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: fence revision %d", req.Revision)
	}
	index, err := rng.FenceIndex(ctx, req.Revision)
	if err != nil {
		if errors.Is(err, shard.ErrNotLeader) || errors.Is(err, shard.ErrNoLeader) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, ToGRPC(err)
	}
	return &tesserapb.FenceRangeResponse{AppliedIndex: index}, nil
}

// fenceCalls batches FenceRange calls per range: one call runs at a time,
// and the readers that arrive meanwhile share the next one.
type fenceCalls struct {
	mu      sync.Mutex
	byRange map[uint64]*rangeFences
}

type rangeFences struct {
	running bool
	next    *fenceBatch // the readers waiting for the next call; nil if none
}

type fenceBatch struct {
	rev    int64  // the highest revision of its readers
	leader uint64 // the node to ask
	done   chan struct{}
	index  uint64
	err    error
}

// fence returns the applied index the leader of range id answers for a
// revision at or above rev, asked after the call began.
func (f *fenceCalls) fence(ctx context.Context, r *Router, id, leader uint64, rev int64) (uint64, error) {
	f.mu.Lock()
	if f.byRange == nil {
		f.byRange = map[uint64]*rangeFences{}
	}
	rf := f.byRange[id]
	if rf == nil {
		rf = &rangeFences{}
		f.byRange[id] = rf
	}
	if rf.next == nil {
		rf.next = &fenceBatch{done: make(chan struct{})}
	}
	b := rf.next
	b.rev = max(b.rev, rev)
	b.leader = leader
	if !rf.running {
		rf.running = true
		go f.run(r, id, rf)
	}
	f.mu.Unlock()
	select {
	case <-b.done:
		return b.index, b.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// run makes the calls for range id until no reader waits.
func (f *fenceCalls) run(r *Router, id uint64, rf *rangeFences) {
	for {
		f.mu.Lock()
		b := rf.next
		if b == nil {
			rf.running = false
			delete(f.byRange, id)
			f.mu.Unlock()
			return
		}
		rf.next = nil
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), fenceCallTimeout)
		b.index, b.err = r.callFenceRange(ctx, id, b.leader, b.rev)
		cancel()
		close(b.done)
	}
}

func (r *Router) callFenceRange(ctx context.Context, id, leader uint64, rev int64) (uint64, error) {
	cc, err := r.nodes.Conn(ctx, leader)
	if err != nil {
		return 0, err
	}
	resp, err := tesserapb.NewInternalClient(cc).FenceRange(forwardedContext(ctx), &tesserapb.FenceRangeRequest{RangeId: id, Revision: rev})
	if err != nil {
		return 0, err
	}
	return resp.AppliedIndex, nil
}
