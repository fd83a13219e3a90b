package tests

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// diffOp is one step of a differential run: an etcd request (a
// *pb.RangeRequest, PutRequest, DeleteRangeRequest, TxnRequest,
// CompactionRequest, LeaseGrantRequest or LeaseRevokeRequest) sent to both
// stores, or, when split is set, a split of Tessera's range holding that key
// (etcd has nothing to do).
type diffOp struct {
	req   proto.Message
	split string
}

func (o diffOp) String() string {
	if o.req == nil {
		return fmt.Sprintf("split at %q", o.split)
	}
	return fmt.Sprintf("%T %s", o.req, prototext.MarshalOptions{}.Format(o.req))
}

// diffGen generates a run's operations from a seed. It sees the store only
// through the answers it is told about (observe) and through peek, a read of
// etcd's current state, which it uses to aim compares at the values keys
// have, so both branches of a Txn are taken often.
type diffGen struct {
	rnd *rand.Rand
	// keys are the run's keys, at most 12: more in one answer would let
	// etcd's unstable sort (insertion sort up to 12 elements) order ties of a
	// non-key sort target differently from key order, which both stores keep.
	keys       []string
	boundaries []string // other strings for range ends and split keys
	values     []string
	splits     bool // several-ranges mode: split between operations
	splitKeys  map[string]bool
	// confined, when set, keeps the keys and spans of the write being
	// generated inside [lo, hi) (hi "" for no end): one of Tessera's
	// ranges, so that most writes are not refused as spanning ranges.
	confined bool
	lo, hi   string

	rev       int64   // etcd's current revision, from its last header
	compacted int64   // the highest successful compaction (0: none yet)
	leases    []int64 // granted and not revoked
	gone      []int64 // revoked, or never granted
	nextLease int64

	peek func(key, end []byte) []*mvccpb.KeyValue
}

var diffKeyPool = []string{
	"a", "a/", "a/1", "a/2", "a/2/x", "a0", "b", "b/1", "b/10", "b/2", "c", "c/1",
	"cc", "d", "d\x00", "d\xff", "e/1", "f", "x/y/z", "\xff", "\xff\xff", "z",
}

var diffBoundaryPool = []string{
	"\x00", "a/3", "a1", "b/", "b0", "b/11", "c/", "c0", "ca", "e", "e/", "m", "y", "\xfe",
}

func newDiffGen(seed uint64, splits bool, peek func(key, end []byte) []*mvccpb.KeyValue) *diffGen {
	g := &diffGen{
		rnd:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		splits:    splits,
		splitKeys: map[string]bool{},
		rev:       1,
		nextLease: 1000,
		gone:      []int64{999},
		peek:      peek,
	}
	pool := slices.Clone(diffKeyPool)
	g.rnd.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	g.keys = pool[:12]
	slices.Sort(g.keys)
	g.boundaries = append(slices.Clone(diffBoundaryPool), pool[12:]...)
	g.values = []string{"", "v0", "v1", "v2", "v3", strings.Repeat("x", 100)}
	return g
}

func (g *diffGen) chance(p float64) bool { return g.rnd.Float64() < p }

func (g *diffGen) pick(list []string) string { return list[g.rnd.IntN(len(list))] }

func (g *diffGen) key() string {
	list := g.keys
	if g.chance(0.1) {
		list = g.boundaries
	}
	if g.confined {
		list = g.inside(list)
		if len(list) == 0 {
			list = g.inside(append(slices.Clone(g.keys), g.boundaries...))
		}
	}
	return g.pick(list)
}

// inside returns the strings of list in [g.lo, g.hi).
func (g *diffGen) inside(list []string) []string {
	var out []string
	for _, k := range list {
		if k >= g.lo && (g.hi == "" || k < g.hi) {
			out = append(out, k)
		}
	}
	return out
}

// confine picks one of Tessera's ranges (as the splits made them) for the
// write about to be generated, most of the time in several-ranges mode.
func (g *diffGen) confine() {
	g.confined = false
	if !g.splits || len(g.splitKeys) == 0 || g.chance(0.15) {
		return
	}
	bounds := []string{""}
	for k := range g.splitKeys {
		bounds = append(bounds, k)
	}
	slices.Sort(bounds)
	i := g.rnd.IntN(len(bounds))
	g.lo, g.hi = bounds[i], ""
	if i+1 < len(bounds) {
		g.hi = bounds[i+1]
	}
	// Only a range holding one of the run's keys, to write.
	g.confined = len(g.inside(g.keys)) > 0
}

// writeKey is a key to put: one of the run's keys, so no answer holds more
// than 12.
func (g *diffGen) writeKey() string {
	if g.confined {
		return g.pick(g.inside(g.keys))
	}
	return g.pick(g.keys)
}

func (g *diffGen) value() string { return g.pick(g.values) }

// span returns a key and range_end: a single key, a prefix, from the key on
// ("\x00"), everything, or up to another key (which may come before the
// start, an empty span).
func (g *diffGen) span() (key, end []byte) {
	k := g.key()
	if g.confined {
		return g.confinedSpan(k)
	}
	switch n := g.rnd.IntN(10); {
	case n < 4:
		return []byte(k), nil
	case n < 6:
		return []byte(k), prefixEnd([]byte(k))
	case n < 7:
		return []byte(k), []byte{0}
	case n < 8:
		return []byte{0}, []byte{0}
	default:
		return []byte(k), []byte(g.key())
	}
}

// confinedSpan is span inside [g.lo, g.hi): a single key, a prefix or a
// span ending in the range, or (in the last range) from the key on.
func (g *diffGen) confinedSpan(k string) (key, end []byte) {
	if g.chance(0.4) {
		return []byte(k), nil
	}
	if p := prefixEnd([]byte(k)); (g.hi == "" && !bytes.Equal(p, []byte{0})) || (g.hi != "" && string(p) <= g.hi) {
		if g.chance(0.4) {
			return []byte(k), p
		}
	}
	if g.hi == "" && g.chance(0.3) {
		return []byte(k), []byte{0}
	}
	var ends []string
	for _, e := range append(slices.Clone(g.keys), g.boundaries...) {
		if e > k && (g.hi == "" || e <= g.hi) {
			ends = append(ends, e)
		}
	}
	if len(ends) == 0 {
		return []byte(k), nil
	}
	return []byte(k), []byte(g.pick(ends))
}

// prefixEnd is clientv3's GetPrefixRangeEnd on bytes: the first key after
// every key with the prefix, "\x00" (no end) when there is none.
func prefixEnd(prefix []byte) []byte {
	end := slices.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// revision picks a revision to read or compact at: mostly between the
// compaction and now, sometimes below the compaction or in the future.
func (g *diffGen) revision() int64 {
	low := max(g.compacted, 1)
	switch n := g.rnd.IntN(20); {
	case n == 0:
		return g.rev + 1 + g.rnd.Int64N(2)
	case n == 1 && g.compacted > 1:
		return 1 + g.rnd.Int64N(g.compacted-1)
	default:
		return low + g.rnd.Int64N(g.rev-low+1)
	}
}

// next returns the next operation.
func (g *diffGen) next() diffOp {
	if g.splits && g.chance(0.03) && len(g.splitKeys) < 8 {
		if k := g.pick(append(slices.Clone(g.keys), g.boundaries...)); k != "\x00" && !g.splitKeys[k] {
			g.splitKeys[k] = true
			return diffOp{split: k}
		}
	}
	switch n := g.rnd.IntN(100); {
	case n < 25:
		return diffOp{req: g.put(true)}
	case n < 35:
		g.confine()
		defer func() { g.confined = false }()
		return diffOp{req: g.deleteRange()}
	case n < 60:
		return diffOp{req: g.rangeReq(true)}
	case n < 90:
		g.confine()
		defer func() { g.confined = false }()
		return diffOp{req: g.txn(0)}
	case n < 93:
		return diffOp{req: g.compact()}
	case n < 97:
		return diffOp{req: g.leaseGrant()}
	default:
		return diffOp{req: g.leaseRevoke()}
	}
}

func (g *diffGen) lease() int64 {
	switch n := g.rnd.IntN(20); {
	case n < 1:
		return g.gone[g.rnd.IntN(len(g.gone))]
	case n < 6 && len(g.leases) > 0:
		return g.leases[g.rnd.IntN(len(g.leases))]
	}
	return 0
}

func (g *diffGen) put(flags bool) *pb.PutRequest {
	p := &pb.PutRequest{Key: []byte(g.writeKey()), Value: []byte(g.value()), Lease: g.lease(), PrevKv: g.chance(0.5)}
	if len(p.Key) == 0 || g.chance(0.005) {
		p.Key = nil // etcd's empty-key error
	}
	if flags && g.chance(0.1) {
		p.IgnoreValue = true
		if g.chance(0.8) {
			p.Value = nil
		}
	}
	if flags && g.chance(0.1) {
		p.IgnoreLease = true
		if g.chance(0.8) {
			p.Lease = 0
		}
	}
	return p
}

func (g *diffGen) deleteRange() *pb.DeleteRangeRequest {
	key, end := g.span()
	return &pb.DeleteRangeRequest{Key: key, RangeEnd: end, PrevKv: g.chance(0.5)}
}

func (g *diffGen) rangeReq(top bool) *pb.RangeRequest {
	key, end := g.span()
	r := &pb.RangeRequest{Key: key, RangeEnd: end}
	if g.chance(0.5) {
		r.Limit = 1 + g.rnd.Int64N(4)
	}
	if g.chance(0.4) {
		r.SortOrder = pb.RangeRequest_SortOrder(g.rnd.IntN(3))
		r.SortTarget = pb.RangeRequest_SortTarget(g.rnd.IntN(5))
	}
	r.KeysOnly = g.chance(0.15)
	r.CountOnly = g.chance(0.1)
	if g.chance(0.1) {
		r.MinModRevision = g.rnd.Int64N(g.rev + 1)
	}
	if g.chance(0.1) {
		r.MaxModRevision = g.rnd.Int64N(g.rev + 1)
	}
	if g.chance(0.1) {
		r.MinCreateRevision = g.rnd.Int64N(g.rev + 1)
	}
	if g.chance(0.1) {
		r.MaxCreateRevision = g.rnd.Int64N(g.rev + 1)
	}
	if g.chance(0.35) {
		r.Revision = g.revision()
	}
	if top {
		r.Serializable = g.chance(0.1)
	}
	return r
}

func (g *diffGen) compact() *pb.CompactionRequest {
	return &pb.CompactionRequest{Revision: g.revision(), Physical: g.chance(0.5)}
}

func (g *diffGen) leaseGrant() *pb.LeaseGrantRequest {
	id := g.nextLease
	if g.chance(0.15) && len(g.leases) > 0 {
		id = g.leases[g.rnd.IntN(len(g.leases))] // etcd's "lease already exists"
	} else {
		g.nextLease++
	}
	// A TTL no run outlives: expiry is not what this test compares.
	return &pb.LeaseGrantRequest{ID: id, TTL: 3600}
}

func (g *diffGen) leaseRevoke() *pb.LeaseRevokeRequest {
	if len(g.leases) > 0 && g.chance(0.8) {
		return &pb.LeaseRevokeRequest{ID: g.leases[g.rnd.IntN(len(g.leases))]}
	}
	return &pb.LeaseRevokeRequest{ID: g.gone[g.rnd.IntN(len(g.gone))]}
}

// txn builds a Txn of depth at most 2 below depth.
func (g *diffGen) txn(depth int) *pb.TxnRequest {
	t := &pb.TxnRequest{}
	for range g.rnd.IntN(4) {
		t.Compare = append(t.Compare, g.compare())
	}
	t.Success = g.txnOps(depth)
	t.Failure = g.txnOps(depth)
	return t
}

func (g *diffGen) txnOps(depth int) []*pb.RequestOp {
	var ops []*pb.RequestOp
	written := map[string]bool{}
	for range g.rnd.IntN(4) {
		var op pb.RequestOp
		switch n := g.rnd.IntN(10); {
		case n < 3:
			op.Request = &pb.RequestOp_RequestRange{RequestRange: g.rangeReq(false)}
		case n < 7:
			p := g.put(false)
			// Mostly keys not yet written in this branch, so that most
			// txns pass the duplicate-key rule.
			for i := 0; i < 3 && written[string(p.Key)]; i++ {
				p.Key = []byte(g.writeKey())
			}
			written[string(p.Key)] = true
			op.Request = &pb.RequestOp_RequestPut{RequestPut: p}
		case n < 9:
			d := g.deleteRange()
			if g.chance(0.7) {
				d.RangeEnd = nil
			}
			op.Request = &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: d}
		default:
			if depth >= 2 {
				continue
			}
			op.Request = &pb.RequestOp_RequestTxn{RequestTxn: g.txn(depth + 1)}
		}
		ops = append(ops, &op)
	}
	return ops
}

// compare builds a compare on a key or a span, aimed at what is there now
// (one of the span's keys, or nothing) more often than not.
func (g *diffGen) compare() *pb.Compare {
	c := &pb.Compare{
		Target: pb.Compare_CompareTarget(g.rnd.IntN(5)),
		Result: pb.Compare_CompareResult(g.rnd.IntN(4)),
		Key:    []byte(g.key()),
	}
	if g.chance(0.25) {
		if g.confined {
			_, c.RangeEnd = g.confinedSpan(string(c.Key))
		} else if _, c.RangeEnd = g.span(); len(c.RangeEnd) == 0 || g.chance(0.3) {
			c.RangeEnd = prefixEnd(c.Key)
		}
	}
	base := &mvccpb.KeyValue{}
	if kvs := g.peek(c.Key, c.RangeEnd); len(kvs) > 0 {
		base = kvs[g.rnd.IntN(len(kvs))]
	}
	near := func(v int64) int64 {
		switch g.rnd.IntN(6) {
		case 0:
			return v - 1
		case 1:
			return v + 1
		case 2:
			return 0
		case 3:
			return g.rnd.Int64N(g.rev + 2)
		}
		return v
	}
	switch c.Target {
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: near(base.Version)}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: near(base.CreateRevision)}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: near(base.ModRevision)}
	case pb.Compare_VALUE:
		v := base.Value
		if g.chance(0.4) {
			v = []byte(g.value())
		}
		c.TargetUnion = &pb.Compare_Value{Value: v}
	case pb.Compare_LEASE:
		l := base.Lease
		if g.chance(0.4) {
			l = g.lease()
		}
		c.TargetUnion = &pb.Compare_Lease{Lease: l}
	}
	return c
}

// observe tells the generator etcd's answer to op (nil when etcd refused it
// or was not asked).
func (g *diffGen) observe(op diffOp, resp proto.Message) {
	if resp == nil {
		return
	}
	if h := responseHeader(resp); h != nil && h.Revision > g.rev {
		g.rev = h.Revision
	}
	switch req := op.req.(type) {
	case *pb.CompactionRequest:
		g.compacted = max(g.compacted, req.Revision)
	case *pb.LeaseGrantRequest:
		g.leases = append(g.leases, req.ID)
		g.gone = slices.DeleteFunc(g.gone, func(id int64) bool { return id == req.ID })
	case *pb.LeaseRevokeRequest:
		g.leases = slices.DeleteFunc(g.leases, func(id int64) bool { return id == req.ID })
		g.gone = append(g.gone, req.ID)
	}
}

// responseHeader returns the header of one of the responses a diffOp gets.
func responseHeader(m proto.Message) *pb.ResponseHeader {
	if h, ok := m.(interface{ GetHeader() *pb.ResponseHeader }); ok {
		return h.GetHeader()
	}
	return nil
}
