package router

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// Leases (docs/design.md, "Leases"; statemachine/lease.go): the home range (the one
// holding the lowest keys) keeps every lease's record and the clock: its
// leader answers KeepAlive and TimeToLive and expires leases. A grant is one
// write to the home range. Another range learns of a lease when a Put there
// first names it: the range answers lease-not-found, the router registers the
// range's span with the lease on the home range (proveLeases), and the Put
// goes again carrying the lease's record for the range. Revocation marks the
// lease on the home range, revokes it on every range overlapping its
// registered spans (the home range keeping its marked record), then drops the
// record; a failure part-way leaves the mark, and the home range's clock
// tries the revocation again. Several ranges delete their keys at one
// revision, as a write spanning ranges (revokeAtOneRevision).

// MaxLeaseTTLSeconds is etcd's largest lease TTL.
const MaxLeaseTTLSeconds = 9_000_000_000

// LeaseGrant serves Lease.LeaseGrant.
func (r *Router) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if req.TTL > MaxLeaseTTLSeconds {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	if r.noSpace() {
		return nil, rpctypes.ErrGRPCNoSpace
	}
	if req.ID < 0 {
		// etcd lease IDs are positive; a negative one could never be renewed by clientv3.
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	home, err := r.home()
	if err != nil {
		return nil, ToGRPC(err)
	}
	ttl := max(req.TTL, r.cfg.MinLeaseTTLSeconds)
	id, chosen := req.ID, req.ID == 0
	var res *tesserapb.Result
	for range 3 {
		if chosen {
			id = newLeaseID()
		}
		err = r.retryLocal(ctx, func() (err error) {
			res, err = home.GrantLease(ctx, id, ttl)
			return err
		})
		if !chosen || !errors.Is(err, statemachine.ErrLeaseExists) {
			break
		}
	}
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseGrantResponse, error) {
			return pb.NewLeaseClient(cc).LeaseGrant(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	resp := &pb.LeaseGrantResponse{}
	if err := proto.Unmarshal(res.Response, resp); err != nil {
		return nil, ToGRPC(fmt.Errorf("router: decoding lease grant response: %w", err))
	}
	resp.Header = r.header(home, r.localRevision(ctx, home))
	return resp, nil
}

// newLeaseID returns a random positive lease ID.
func newLeaseID() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := int64(binary.BigEndian.Uint64(b[:]) >> 1)
	if id == 0 {
		id = 1
	}
	return id
}

// localRevision is a range replica's own revision, for headers of responses
// that write no key.
func (r *Router) localRevision(ctx context.Context, rng Range) int64 {
	out, err := rng.Read(ctx, false, func(v *statemachine.View) (any, error) { return v.Revision(), nil })
	if err != nil {
		return 0
	}
	return out.(int64)
}

// LeaseRevoke serves Lease.LeaseRevoke: the lease's keys are deleted in
// every range at one revision (RevokeEverywhere).
func (r *Router) LeaseRevoke(ctx context.Context, req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	home, err := r.home()
	if err != nil {
		return nil, ToGRPC(err)
	}
	if _, lerr := home.LeaseRemaining(ctx, req.ID); lerr != nil && !errors.Is(lerr, statemachine.ErrLeaseNotFound) {
		// Only the home range's leader revokes: forward there.
		if fresp, ferr, ok := forward(r, ctx, lerr, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseRevokeResponse, error) {
			return pb.NewLeaseClient(cc).LeaseRevoke(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(lerr)
	}
	rev, err := r.RevokeEverywhere(ctx, req.ID)
	if err != nil {
		return nil, ToGRPC(err)
	}
	return &pb.LeaseRevokeResponse{Header: r.header(home, rev)}, nil
}

// defaultRevokeRetryAfter is TestingKnobs.RevokeRetryAfter's default.
const defaultRevokeRetryAfter = 30 * time.Second

// RevokeEverywhere marks a lease on the home range, revokes it on every
// range its spans overlap, then deletes its record, and returns the highest
// revision a range deleted its keys at. It is what the home range's leader
// runs when a lease expires.
func (r *Router) RevokeEverywhere(ctx context.Context, id int64) (int64, error) {
	home, err := r.home()
	if err != nil {
		return 0, err
	}
	// The mark first: from then on no range can be given the lease's record,
	// so the revocations below leave none behind.
	retryAfter := r.cfg.Knobs.RevokeRetryAfter
	if retryAfter <= 0 {
		retryAfter = defaultRevokeRetryAfter
	}
	var rec *tesserapb.LeaseRecord
	err = r.retryLocal(ctx, func() (err error) {
		rec, err = home.MarkLease(ctx, id, retryAfter)
		return err
	})
	if err != nil {
		return 0, err
	}
	if hook := r.cfg.Knobs.AfterLeaseMark; hook != nil {
		if err := hook(id); err != nil {
			return 0, err
		}
	}
	// The ranges given the lease's record, and the ranges split off them
	// since, are those overlapping its spans. Each applies the revocation
	// with or without the lease's record: that raises its lease floor above
	// any attach proved before the mark. The home range keeps its (marked)
	// record until every range is done, so that a revocation stopped
	// part-way is tried again from the lease clock.
	holds := holdsLease(rec)
	revokeCmd := func(keepRecord bool) *tesserapb.Command {
		return &tesserapb.Command{Op: &tesserapb.Command_LeaseRevoke{LeaseRevoke: &tesserapb.LeaseRevokeCommand{
			Id: id, WithoutRecord: true, KeepRecord: keepRecord,
		}}}
	}
	revoke, revokeHome := revokeCmd(false), revokeCmd(true)
	var (
		mu  sync.Mutex
		rev int64
	)
	revokeOn := func(rng Range) (*tesserapb.Result, error) {
		cmd := revoke
		if rng.RangeID() == home.RangeID() {
			cmd = revokeHome
		}
		res, err := r.writeTo(ctx, rng, cmd, true, 0)
		if err != nil {
			return nil, fmt.Errorf("router: revoking lease %x on range %d: %w", id, rng.RangeID(), err)
		}
		mu.Lock()
		rev = max(rev, revokedAt(res))
		mu.Unlock()
		return res, nil
	}
	if r.cfg.TxnRecords != nil && r.rangesWanted(holds, home) > 1 {
		// Keys in several ranges: deleted at one revision.
		if rev, err = r.revokeAtOneRevision(ctx, id, home, holds); err != nil {
			return 0, err
		}
	} else if err := r.everyRange(ctx, map[uint64]bool{}, holds, revokeOn); err != nil {
		return 0, err
	}
	// Every range holding keys of it is done: the record goes (and the
	// lease leaves the clock).
	if err := r.retryLocal(ctx, func() error {
		_, err := home.RevokeLease(ctx, id)
		return err
	}); err != nil {
		return 0, err
	}
	return rev, nil
}

// rangesWanted counts the ranges want accepts (nil: every range), home
// among them.
func (r *Router) rangesWanted(want func(Range) bool, home Range) int {
	n := 0
	for _, rng := range r.ranges.list() {
		if rng.RangeID() == home.RangeID() || want == nil || want(rng) {
			n++
		}
	}
	return n
}

// everyRange runs do (a lease revocation) once on every range that want
// accepts (nil: every range) not in done, adding each to done, including the
// ranges that split off one of them before the command applied there. A
// split gives the child its share of the parent's keys (and a copy of its
// lease records), so a command the parent applies after a split never
// reaches the child by itself. The command's result carries the generation
// of the bounds it applied under: once this node's replica has applied as
// much, and the range cache is current (rebuilt from those bounds, with the
// ranges the split made open here), the cache lists every such child; ranges
// not done yet get the command too, until a pass adds none.
//
// The ranges of one pass get the command concurrently (each is its own Raft
// group), so a revocation costs about one write's latency however many
// ranges it goes to.
func (r *Router) everyRange(ctx context.Context, done map[uint64]bool, want func(Range) bool, do func(Range) (*tesserapb.Result, error)) error {
	pending := func(rng Range) bool { return !done[rng.RangeID()] && (want == nil || want(rng)) }
	for {
		var left []Range
		for _, rng := range r.ranges.list() {
			if pending(rng) {
				left = append(left, rng)
			}
		}
		errs := make([]error, len(left))
		var wg sync.WaitGroup
		for i, rng := range left {
			wg.Go(func() {
				res, err := do(rng)
				if err == nil {
					r.awaitApplied(ctx, rng, res)
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for i, rng := range left {
			if errs[i] != nil {
				return errs[i]
			}
			done[rng.RangeID()] = true
		}
		if err := r.awaitCurrentCache(ctx); err != nil {
			return err
		}
		more := false
		for _, rng := range r.ranges.list() {
			more = more || pending(rng)
		}
		if !more {
			return nil
		}
	}
}

// awaitApplied waits (bounded by ctx) until this node's replica of rng has
// applied bounds at least as new as those a command's result res was
// applied under.
func (r *Router) awaitApplied(ctx context.Context, rng Range, res *tesserapb.Result) {
	for res != nil && r.generationOf(rng) < res.Generation {
		if _, remote := rng.(*remoteRange); remote {
			r.ranges.Refresh()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// awaitCurrentCache waits until the range cache is current: built from the
// bounds the replicas have applied, covering every key (the ranges a split
// makes are opened in the background).
func (r *Router) awaitCurrentCache(ctx context.Context) error {
	for !r.ranges.current() {
		r.ranges.Refresh()
		if r.ranges.current() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func revokedAt(res *tesserapb.Result) int64 {
	resp := &pb.LeaseRevokeResponse{}
	if res == nil || proto.Unmarshal(res.Response, resp) != nil {
		return 0
	}
	return resp.GetHeader().GetRevision()
}

// LeaseKeepAlive serves the keep-alive stream. Renewals need the home range's
// leader; on another node the stream is relayed to the leader's node.
func (r *Router) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	var relay pb.Lease_LeaseKeepAliveClient
	defer func() {
		if relay != nil {
			_ = relay.CloseSend()
		}
	}()
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		home, err := r.home()
		if err != nil {
			return ToGRPC(err)
		}
		ttl, err := home.RenewLease(ctx, req.ID)
		if errors.Is(err, statemachine.ErrLeaseNotFound) {
			// etcd answers an unknown lease with TTL 0, not an error.
			ttl, err = 0, nil
		}
		if err == nil {
			resp := &pb.LeaseKeepAliveResponse{Header: r.header(home, r.localRevision(ctx, home)), ID: req.ID, TTL: ttl}
			if err := stream.Send(resp); err != nil {
				return err
			}
			continue
		}
		leader, ok := leaderToForward(ctx, err)
		if !ok {
			return ToGRPC(err)
		}
		if relay == nil {
			cc, cerr := r.nodes.Conn(ctx, leader)
			if cerr != nil {
				return ToGRPC(err)
			}
			relay, cerr = pb.NewLeaseClient(cc).LeaseKeepAlive(forwardedContext(ctx))
			if cerr != nil {
				return ToGRPC(err)
			}
		}
		if err := relay.Send(req); err != nil {
			return err
		}
		resp, err := relay.Recv()
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// LeaseTimeToLive serves Lease.LeaseTimeToLive. An unknown lease gets TTL -1,
// as in etcd. The attached keys are gathered from the ranges that may hold
// some (holdsLease).
func (r *Router) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	home, err := r.home()
	if err != nil {
		return nil, ToGRPC(err)
	}
	left, err := home.LeaseRemaining(ctx, req.ID)
	if err != nil && !errors.Is(err, statemachine.ErrLeaseNotFound) {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseTimeToLiveResponse, error) {
			return pb.NewLeaseClient(cc).LeaseTimeToLive(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	resp := &pb.LeaseTimeToLiveResponse{Header: r.header(home, r.localRevision(ctx, home)), ID: req.ID, TTL: left}
	if err != nil {
		// Not on the clock: unknown, expired, or being revoked.
		return &pb.LeaseTimeToLiveResponse{Header: resp.Header, ID: req.ID, TTL: -1}, nil
	}
	// The home range has the lease's record, its keys there and the spans of
	// the other ranges that may hold keys of it. Each range is read
	// linearizably on the local replica (ReadIndex works on followers); the
	// reads need not be one snapshot.
	leaseOn := func(rng Range) (*tesserapb.LeaseRecord, [][]byte, error) {
		out, err := rng.Read(ctx, true, func(v *statemachine.View) (any, error) {
			rec, keys, err := v.Lease(req.ID)
			return [2]any{rec, keys}, err
		})
		if err != nil {
			return nil, nil, err
		}
		pair := out.([2]any)
		return pair[0].(*tesserapb.LeaseRecord), pair[1].([][]byte), nil
	}
	rec, keys, err := leaseOn(home)
	if errors.Is(err, statemachine.ErrLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: resp.Header, ID: req.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, ToGRPC(err)
	}
	resp.GrantedTTL = rec.TtlSeconds
	if !req.Keys {
		return resp, nil
	}
	resp.Keys = keys
	holds := holdsLease(rec)
	for _, rng := range r.ranges.list() {
		if rng.RangeID() == home.RangeID() || !holds(rng) {
			continue
		}
		_, keys, err := leaseOn(rng)
		if errors.Is(err, statemachine.ErrLeaseNotFound) {
			continue
		}
		if err != nil {
			return nil, ToGRPC(err)
		}
		resp.Keys = append(resp.Keys, keys...)
	}
	slices.SortFunc(resp.Keys, bytes.Compare)
	return resp, nil
}

// holdsLease returns whether a range may hold keys of the lease whose home
// record is rec: it overlaps one of the record's spans (every range, for a
// record written before spans were tracked).
func holdsLease(rec *tesserapb.LeaseRecord) func(Range) bool {
	return func(rng Range) bool {
		if !rec.GetSpansTracked() {
			return true
		}
		start, end, ok := rng.Bounds()
		return !ok || slices.ContainsFunc(rec.GetSpans(), func(s *tesserapb.KeySpan) bool {
			return SpansOverlap(start, end, s.GetStart(), s.GetEnd())
		})
	}
}

// LeaseLeases serves Lease.LeaseLeases from the home range.
func (r *Router) LeaseLeases(ctx context.Context, req *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	home, err := r.home()
	if err != nil {
		return nil, ToGRPC(err)
	}
	out, err := home.Read(ctx, true, func(v *statemachine.View) (any, error) {
		recs, err := v.Leases()
		if err != nil {
			return nil, err
		}
		resp := &pb.LeaseLeasesResponse{Header: r.header(home, v.Revision())}
		for _, rec := range recs {
			if !rec.Revoking {
				resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: rec.Id})
			}
		}
		return resp, nil
	})
	if err != nil {
		if fresp, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (*pb.LeaseLeasesResponse, error) {
			return pb.NewLeaseClient(cc).LeaseLeases(ctx, req)
		}); ok {
			return fresp, ferr
		}
		return nil, ToGRPC(err)
	}
	return out.(*pb.LeaseLeasesResponse), nil
}

// maxLeaseAttaches bounds the rounds of proving a write's leases and
// writing again (a split, or a revocation on the range refusing the proof,
// makes another round).
const maxLeaseAttaches = 5

// proveLeases proves, for a write to rng that rng refused for a lease it
// does not know, every lease req's Puts name (statemachine/lease.go): for
// each it takes the oracle's current revision P and registers rng's span with
// the lease on the home range. The write goes again carrying the attachments
// (TxnCommand.attach), which the range refuses, with the write, if it applied
// a revocation at or above P since. A lease the home range does not have, or
// is revoking, is left out (missing): the range refuses the write only if a
// Put naming it runs, as etcd checks only the operations of the branches
// taken; with none left to attach it is ErrLeaseNotFound.
func (r *Router) proveLeases(ctx context.Context, rng Range, req *pb.TxnRequest) (attach []*tesserapb.LeaseAttach, missing bool, err error) {
	home, err := r.home()
	if err != nil {
		return nil, false, err
	}
	if home.RangeID() == rng.RangeID() {
		// The home range has every lease: not found there is not found.
		return nil, true, statemachine.ErrLeaseNotFound
	}
	for _, id := range txnLeases(req) {
		proof, err := r.oracle.Current(ctx)
		if err != nil {
			return nil, false, err
		}
		start, end, _ := rng.Bounds()
		register := &tesserapb.Command{Op: &tesserapb.Command_LeaseRegister{LeaseRegister: &tesserapb.LeaseRegisterCommand{
			Id: id, Span: &tesserapb.KeySpan{Start: start, End: end},
		}}}
		res, err := r.writeTo(ctx, home, register, false, 0)
		if errors.Is(err, statemachine.ErrLeaseNotFound) {
			missing = true
			continue
		}
		if err != nil {
			return nil, false, err
		}
		rec := &tesserapb.LeaseRecord{}
		if err := proto.Unmarshal(res.GetResponse(), rec); err != nil {
			return nil, false, fmt.Errorf("router: decoding the record of lease %x: %w", id, err)
		}
		if hook := r.cfg.Knobs.AfterLeaseProof; hook != nil {
			hook(id, proof)
		}
		attach = append(attach, &tesserapb.LeaseAttach{Id: id, TtlSeconds: rec.TtlSeconds, ProofRevision: proof})
	}
	if len(attach) == 0 {
		return nil, true, statemachine.ErrLeaseNotFound
	}
	return attach, missing, nil
}

// txnLeases returns the distinct lease IDs the Puts of a Txn (nested Txns
// too) attach keys to.
func txnLeases(req *pb.TxnRequest) []int64 {
	var ids []int64
	for put := range txnPuts(req.Success, req.Failure) {
		if put.Lease != 0 && !slices.Contains(ids, put.Lease) {
			ids = append(ids, put.Lease)
		}
	}
	return ids
}

// SpansOverlap reports whether the key spans [s1, e1) and [s2, e2) share a
// key; an empty end is the end of the keyspace.
func SpansOverlap(s1, e1, s2, e2 []byte) bool {
	return (len(e2) == 0 || bytes.Compare(s1, e2) < 0) && (len(e1) == 0 || bytes.Compare(s2, e1) < 0)
}
