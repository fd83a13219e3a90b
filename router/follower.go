package router

import (
	"context"
	"errors"
	"fmt"
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
// (docs/design.md, "Read fence"): the range leader raises its fence to the read's
// revision, waits for the writes at or below it, confirms its leadership and
// answers its applied index (Internal.FenceRange); this replica waits until
// it has applied that index and reads locally. The answer never crosses the
// network twice, and concurrent reads of one range share one FenceRange call
// at the highest of their revisions, as etcd's ReadIndex requests share one
// heartbeat round.

// fenceCallTimeout bounds one FenceRange call, which serves many readers.
const fenceCallTimeout = 5 * time.Second

// viewAt builds the read a caller runs once it knows the revision it reads
// at.
type viewAt func(rev int64) func(*statemachine.View) (any, error)

// readAt runs read(rev) on a view of rng in which revision rev is readable
// and complete, and returns rev. A rev of 0 reads at the oracle's current
// revision taken after the call began: when a leader elsewhere is known,
// that leader takes it as part of its FenceRange (one round trip instead of
// two). The read runs on this replica when it leads the range, otherwise
// here after the leader's FenceRange. It returns the replica's
// *NotLeaderError (for the caller to forward the request) when the leader
// cannot be asked.
func (r *Router) readAt(ctx context.Context, rng Range, rev int64, read viewAt) (any, int64, error) {
	if rev == 0 {
		if leader, _, ok := rng.Leader(); ok && leader != rng.ReplicaID() {
			index, fenced, err := r.fences.fence(ctx, r, rng.RangeID(), leader, 0, true)
			if err == nil {
				out, err := rng.ReadAfter(ctx, index, fenced, read(fenced))
				return out, fenced, err
			}
			r.cfg.Logger.Debug("fencing a range on its leader", "range", rng.RangeID(), "leader", leader, "err", err)
		}
		cur, err := r.oracle.Current(ctx)
		if err != nil {
			return nil, 0, err
		}
		rev = cur
	}
	out, err := rng.ReadAt(ctx, rev, read(rev))
	leader, ok := leaderOf(err)
	if !ok {
		return out, rev, err
	}
	index, _, ferr := r.fences.fence(ctx, r, rng.RangeID(), leader, rev, false)
	if ferr != nil {
		r.cfg.Logger.Debug("fencing a range on its leader", "range", rng.RangeID(), "leader", leader, "err", ferr)
		return nil, rev, err
	}
	out, err = rng.ReadAfter(ctx, index, rev, read(rev))
	return out, rev, err
}

// FenceRange serves Internal.FenceRange on the range's leader.
func (r *Router) FenceRange(ctx context.Context, req *tesserapb.FenceRangeRequest) (*tesserapb.FenceRangeResponse, error) {
	rng := r.ranges.byID(req.RangeId)
	if rng == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "tessera: range %d is not on this node", req.RangeId)
	}
	rev := req.Revision
	if req.Current {
		cur, err := r.oracle.Current(ctx)
		if err != nil {
			return nil, ToGRPC(err)
		}
		rev = max(rev, cur)
	}
	if rev <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: fence revision %d", rev)
	}
	index, err := rng.FenceIndex(ctx, rev)
	if err != nil {
		if errors.Is(err, shard.ErrNotLeader) || errors.Is(err, shard.ErrNoLeader) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, ToGRPC(err)
	}
	return &tesserapb.FenceRangeResponse{AppliedIndex: index, Revision: rev}, nil
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
	rev     int64  // the highest revision of its readers
	current bool   // a reader wants the oracle's current revision
	leader  uint64 // the node to ask
	readers int    // how many readers share it
	done    chan struct{}
	index   uint64
	fenced  int64 // the revision the leader fenced
	err     error
}

// fence returns the applied index the leader of range id answers for a
// revision at or above rev (and, with current, at or above the oracle's
// current revision), asked after the call began, and the revision fenced.
func (f *fenceCalls) fence(ctx context.Context, r *Router, id, leader uint64, rev int64, current bool) (index uint64, fenced int64, err error) {
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
	b.current = b.current || current
	b.leader = leader
	b.readers++
	if !rf.running {
		if err := r.stopper.RunAsync(func() { f.run(r, id, rf) }); err != nil {
			// A new runner's batch has this caller alone.
			delete(f.byRange, id)
			f.mu.Unlock()
			return 0, 0, shard.ErrStopped
		}
		rf.running = true
	}
	f.mu.Unlock()
	select {
	case <-b.done:
		return b.index, b.fenced, b.err
	case <-ctx.Done():
		return 0, 0, ctx.Err()
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
		ctx, cancel := r.stopper.WithTimeout(fenceCallTimeout)
		b.index, b.fenced, b.err = r.callFenceRange(ctx, id, b)
		cancel()
		close(b.done)
	}
}

func (r *Router) callFenceRange(ctx context.Context, id uint64, b *fenceBatch) (uint64, int64, error) {
	cc, err := r.nodes.Conn(ctx, b.leader)
	if err != nil {
		return 0, 0, err
	}
	resp, err := tesserapb.NewInternalClient(cc).FenceRange(forwardedContext(ctx), &tesserapb.FenceRangeRequest{RangeId: id, Revision: b.rev, Current: b.current})
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			wake(r.ranges.byID(id))
		}
		return 0, 0, err
	}
	if resp.Revision < b.rev {
		return 0, 0, fmt.Errorf("router: range %d fenced at %d, asked %d", id, resp.Revision, b.rev)
	}
	return resp.AppliedIndex, resp.Revision, nil
}
