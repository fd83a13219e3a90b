package router

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// remoteRange stands in the range cache for a range this node holds no
// replica of, as the meta range's descriptor describes it. Requests for it
// go whole to a node holding a replica: reads to any replica (each serves a
// linearizable read after its leader's fence), writes and lease calls to
// the leader, found by asking the replicas, which name it. Its methods that
// would run on a local replica answer with a *shard.NotLeaderError naming
// the node to ask, which is what the router's forwarding paths act on.
type remoteRange struct {
	desc *tesserapb.RangeDescriptor // never modified
	// leader is the node last seen leading the range (0: unknown).
	leader atomic.Uint64
	// turn rotates the replica asked when the leader is not known.
	turn atomic.Uint32
}

func newRemoteRange(d *tesserapb.RangeDescriptor) *remoteRange { return &remoteRange{desc: d} }

func (m *remoteRange) RangeID() uint64   { return m.desc.RangeId }
func (m *remoteRange) ReplicaID() uint64 { return 0 }
func (m *remoteRange) Generation() uint64 {
	return m.desc.Generation
}

func (m *remoteRange) Bounds() (start, end []byte, ok bool) {
	if len(m.desc.EndKey) > 0 {
		end = m.desc.EndKey
	}
	return m.desc.StartKey, end, true
}

// RecordLoad does nothing: the nodes holding the range count what they serve.
func (m *remoteRange) RecordLoad([]byte) {}

func (m *remoteRange) Leader() (uint64, uint64, bool) {
	l := m.leader.Load()
	return l, 0, l != 0
}

// noteLeader records the node that served a write as the range's leader, or
// forgets a leader that did not.
func (m *remoteRange) noteLeader(node uint64, ok bool) {
	if ok {
		m.leader.Store(node)
	} else {
		m.leader.CompareAndSwap(node, 0)
	}
}

// target is the node to ask next: the known leader, else the replicas in turn.
func (m *remoteRange) target() uint64 {
	if l := m.leader.Load(); l != 0 {
		return l
	}
	ids := m.desc.ReplicaNodeIds
	if len(ids) == 0 {
		return 0
	}
	return ids[int(m.turn.Add(1))%len(ids)]
}

// elsewhere is the answer of every method that needs a local replica.
func (m *remoteRange) elsewhere() error {
	return &shard.NotLeaderError{LeaderReplicaID: m.target()}
}

func (m *remoteRange) Write(context.Context, *tesserapb.Command, bool) (*tesserapb.Result, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) Read(context.Context, bool, func(*statemachine.View) (any, error)) (any, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) ReadAt(context.Context, int64, func(*statemachine.View) (any, error)) (any, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) FenceIndex(context.Context, int64) (uint64, error) { return 0, m.elsewhere() }

func (m *remoteRange) ReadAfter(context.Context, uint64, int64, func(*statemachine.View) (any, error)) (any, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) Fence(context.Context, int64) error { return m.elsewhere() }

func (m *remoteRange) GrantLease(context.Context, int64, int64) (*tesserapb.Result, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) RevokeLease(context.Context, int64) (*tesserapb.Result, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) MarkLease(context.Context, int64, time.Duration) (*tesserapb.LeaseRecord, error) {
	return nil, m.elsewhere()
}

func (m *remoteRange) RenewLease(context.Context, int64) (int64, error) { return 0, m.elsewhere() }

func (m *remoteRange) LeaseRemaining(context.Context, int64) (int64, error) {
	return 0, m.elsewhere()
}

var _ Range = (*remoteRange)(nil)

// maxForwardHops bounds how many times a request is passed between nodes: a
// node without a replica sends it to one that has one (one hop), which may
// pass it once more to the range's leader (two).
const maxForwardHops = 2

// forwardHops returns how many times the request in ctx was forwarded.
func forwardHops(ctx context.Context) int {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return 0
	}
	vals := md.Get(forwardedKey)
	if len(vals) == 0 {
		return 0
	}
	n, err := strconv.Atoi(vals[len(vals)-1])
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// onReplica runs call against the nodes holding a range this node has no
// replica of, one at a time — the leader when known, else the replicas in
// turn — until one answers something other than "not here" (a node that is
// down, does not hold the range, or is not ready). The call carries the
// request's forwarding count.
func (r *Router) onReplica(ctx context.Context, m *remoteRange, call func(context.Context, *grpc.ClientConn) error) error {
	hops := forwardHops(ctx)
	if hops >= maxForwardHops {
		return ErrNoRange
	}
	out := metadata.AppendToOutgoingContext(ctx, forwardedKey, strconv.Itoa(hops+1))
	var err error
	for range len(m.desc.ReplicaNodeIds) + 1 {
		node := m.target()
		var cc *grpc.ClientConn
		if cc, err = r.nodes.Conn(ctx, node); err == nil {
			if err = call(out, cc); err == nil || (!notHere(err) && ctx.Err() == nil) {
				return err
			}
		}
		// A node that did not answer before the request's deadline may be
		// cut off from the others, which elect another leader meanwhile:
		// the next request asks the replicas in turn.
		m.noteLeader(node, false)
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

// notHere reports whether a node's answer says to try another replica: it
// could not be reached, does not hold the range (or no longer), or is not
// ready to serve it.
func notHere(err error) bool {
	if errors.Is(err, ErrNoRange) || neverSent(err) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.FailedPrecondition:
		return true
	}
	return false
}

// generationOf is the generation of a range's bounds as this node knows
// them: its replica's applied bounds, or the descriptor the cache routes
// to a range held elsewhere by now.
func (r *Router) generationOf(rng Range) uint64 {
	if _, remote := rng.(*remoteRange); !remote {
		return rng.Generation()
	}
	if d := r.ranges.Remote(rng.RangeID()); d != nil {
		return d.Generation
	}
	return rng.Generation()
}

// Part is one range's share of a key interval (see PartsOf).
type Part struct {
	RangeID uint64
	// Key and End are the share in etcd's form: End nil for a single key,
	// "\x00" for every key from Key on.
	Key, End []byte
	// Local: this node holds a replica of the range.
	Local bool
}

// PartsOf returns the ranges holding keys of etcd's interval [key,
// rangeEnd) with their shares of it, in key order, without waiting; ok is
// false while part of it has no range.
func (r *Router) PartsOf(key, rangeEnd []byte) (parts []Part, ok bool) {
	spans, ok := r.ranges.overlapping(key, rangeEnd)
	if !ok {
		// A replica that opened since the cache was built (a restart opens
		// them in the background), or a descriptor recorded since, fills
		// the hole.
		r.ranges.Refresh()
		if spans, ok = r.ranges.overlapping(key, rangeEnd); !ok {
			return nil, false
		}
	}
	parts = make([]Part, len(spans))
	for i, sp := range spans {
		_, remote := sp.rng.(*remoteRange)
		parts[i] = Part{RangeID: sp.rng.RangeID(), Key: sp.key, End: sp.end, Local: !remote}
	}
	return parts, true
}

// OnReplica runs call against a node holding a replica of a range this
// node routes to elsewhere, as onReplica does; ErrNoRange when the range is
// not routed elsewhere.
func (r *Router) OnReplica(ctx context.Context, rangeID uint64, call func(context.Context, *grpc.ClientConn) error) error {
	m := r.ranges.remoteByID(rangeID)
	if m == nil {
		return ErrNoRange
	}
	return r.onReplica(ctx, m, call)
}

// RangeFor returns the ID of the range holding key and whether this node
// holds a replica of it.
func (r *Router) RangeFor(key []byte) (rangeID uint64, local bool, err error) {
	rng, err := r.rangeFor(key)
	if err != nil {
		return 0, false, err
	}
	_, remote := rng.(*remoteRange)
	return rng.RangeID(), !remote, nil
}

// CatchUp makes this node's replica of a range hold every write at or below
// rev: a fenced read at rev, here when it leads, else after the leader's
// FenceRange.
func (r *Router) CatchUp(ctx context.Context, rangeID uint64, rev int64) error {
	_, err := r.ReadLocalAt(ctx, rangeID, rev, func(*statemachine.View) (any, error) { return nil, nil })
	return err
}

// ReadLocalAt runs fn on a view of this node's replica of a range in which
// revision rev is readable and complete, as CatchUp makes it.
func (r *Router) ReadLocalAt(ctx context.Context, rangeID uint64, rev int64, fn func(*statemachine.View) (any, error)) (any, error) {
	rng := r.ranges.byID(rangeID)
	if rng == nil {
		return nil, ErrNoRange
	}
	out, _, err := r.readAt(ctx, rng, rev, func(int64) func(*statemachine.View) (any, error) { return fn })
	return out, err
}
