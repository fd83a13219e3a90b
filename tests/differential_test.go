package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestDifferentialEtcd runs seeded random sequences of KV and lease requests
// against a real etcd (etcdVersion, built once from the module proxy, see
// etcdServerBinary) and against a one-node Tessera, first on one range and
// then on several (split at random keys between the requests), and compares
// every answer field by field: headers' revisions, keys, values, versions,
// create and mod revisions, leases, counts, more, prev_kvs, succeeded, and
// errors by gRPC code and message. The only differences it accepts are listed
// in diffAllowances. After the sequence, every key is read at every revision
// still held, from both.
//
// Environment:
//
//	TESSERA_DIFF_SEED   replay one seed (printed on failure)
//	TESSERA_DIFF_SEEDS  seeds per mode (default 3; random unless replaying)
//	TESSERA_DIFF_OPS    operations per seed (default 400)
//	TESSERA_DIFF_SOAK=1 a long run: 20 seeds of 2,000 operations per mode
//	TESSERA_DIFF_HISTORY operations listed before a difference (default 25)
func TestDifferentialEtcd(t *testing.T) {
	seeds, ops := diffParams(t)
	etcdServerBinary(t) // built before any server starts
	for _, mode := range []struct {
		name   string
		splits bool
	}{{"one-range", false}, {"ranges", true}} {
		t.Run(mode.name, func(t *testing.T) {
			for _, seed := range seeds {
				t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
					runDifferential(t, seed, ops, mode.splits)
				})
			}
		})
	}
}

func diffParams(t *testing.T) (seeds []uint64, ops int) {
	n, ops := 3, 400
	if os.Getenv("TESSERA_DIFF_SOAK") != "" {
		n, ops = 20, 2000
	}
	if v := os.Getenv("TESSERA_DIFF_SEEDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("TESSERA_DIFF_SEEDS: %v", err)
		}
	}
	if v := os.Getenv("TESSERA_DIFF_OPS"); v != "" {
		var err error
		if ops, err = strconv.Atoi(v); err != nil {
			t.Fatalf("TESSERA_DIFF_OPS: %v", err)
		}
	}
	if v := os.Getenv("TESSERA_DIFF_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("TESSERA_DIFF_SEED: %v", err)
		}
		return []uint64{seed}, ops
	}
	base := uint64(time.Now().UnixNano())
	for i := range n {
		seeds = append(seeds, base+uint64(i)*7919)
	}
	return seeds, ops
}

// diffTarget is one store under test, spoken to through etcd's own gRPC
// clients on a connection of its own.
type diffTarget struct {
	kv    pb.KVClient
	lease pb.LeaseClient
	// retryUnavailable: a Tessera request refused as Unavailable (a split
	// moving a range's bounds under it) is sent again, as etcd's client
	// does.
	retryUnavailable bool
}

func newDiffTarget(conn *grpc.ClientConn, retry bool) *diffTarget {
	return &diffTarget{kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn), retryUnavailable: retry}
}

func (d *diffTarget) do(req proto.Message) (proto.Message, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := d.once(ctx, req)
		cancel()
		if d.retryUnavailable && status.Code(err) == codes.Unavailable && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return resp, err
	}
}

func (d *diffTarget) once(ctx context.Context, req proto.Message) (proto.Message, error) {
	switch r := req.(type) {
	case *pb.RangeRequest:
		return d.kv.Range(ctx, r)
	case *pb.PutRequest:
		return d.kv.Put(ctx, r)
	case *pb.DeleteRangeRequest:
		return d.kv.DeleteRange(ctx, r)
	case *pb.TxnRequest:
		return d.kv.Txn(ctx, r)
	case *pb.CompactionRequest:
		return d.kv.Compact(ctx, r)
	case *pb.LeaseGrantRequest:
		return d.lease.LeaseGrant(ctx, r)
	case *pb.LeaseRevokeRequest:
		return d.lease.LeaseRevoke(ctx, r)
	}
	return nil, fmt.Errorf("differential: no call for %T", req)
}

// diffRun is one seed's run in one mode.
type diffRun struct {
	t       *testing.T
	seed    uint64
	splits  bool
	etcd    *diffTarget
	tessera *diffTarget
	cluster *testcluster.Cluster
	history []string // what was done, for the failure report
	revs    *revMap
	// tally counts what the run did (request kinds, errors, branches,
	// allowances used), logged at its end.
	tally map[string]int

	// lastReadRev is the header revision of Tessera's last linearizable
	// Range, and wroteSince whether a write was asked since: reads must not
	// move the revision.
	lastReadRev int64
	wroteSince  bool
}

func runDifferential(t *testing.T, seed uint64, ops int, splits bool) {
	e := startEtcd(t)
	c := testcluster.Start(t, 1)
	tconn, err := grpc.NewClient(strings.TrimPrefix(c.Nodes[0].ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tconn.Close() })
	r := &diffRun{
		t: t, seed: seed, splits: splits, cluster: c, tally: map[string]int{},
		etcd:    newDiffTarget(e.conn, false),
		tessera: newDiffTarget(tconn, true),
	}
	first := &pb.RangeRequest{Key: []byte("a")}
	eFirst, err := r.etcd.do(first)
	if err != nil {
		t.Fatal(err)
	}
	tFirst, err := r.tessera.do(first)
	if err != nil {
		t.Fatal(err)
	}
	r.revs = newRevMap(responseHeader(eFirst).Revision, responseHeader(tFirst).Revision)
	r.lastReadRev = responseHeader(tFirst).Revision
	gen := newDiffGen(seed, splits, r.peek)
	for i := range ops {
		op := gen.next()
		resp := r.step(i, op)
		gen.observe(op, resp)
	}
	r.checkHistory(gen.rev)
	t.Logf("seed %d: %d operations, etcd at revision %d, compacted at %d, Tessera at %d; %v",
		seed, ops, gen.rev, gen.compacted, r.revs.tessera[r.revs.current()], r.tally)
}

// peek reads etcd's current state of a span, for the generator.
func (r *diffRun) peek(key, end []byte) []*mvccpb.KeyValue {
	resp, err := r.etcd.do(&pb.RangeRequest{Key: key, RangeEnd: end})
	if err != nil {
		r.fail("peek at etcd's %q-%q: %v", key, end, err)
	}
	return resp.(*pb.RangeResponse).Kvs
}

func (r *diffRun) fail(format string, args ...any) {
	r.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, format, args...)
	fmt.Fprintf(&b, "\n\nseed %d (mode %s); replay with:\n  TESSERA_DIFF_SEED=%d go test ./tests/ -run 'TestDifferentialEtcd/%s' -v\n",
		r.seed, r.modeName(), r.seed, r.modeName())
	last := 25
	if v, err := strconv.Atoi(os.Getenv("TESSERA_DIFF_HISTORY")); err == nil {
		last = v
	}
	from := max(0, len(r.history)-last)
	fmt.Fprintf(&b, "the last %d of %d operations before it:\n", len(r.history)-from, len(r.history))
	for _, h := range r.history[from:] {
		fmt.Fprintf(&b, "  %s\n", h)
	}
	r.t.Fatal(b.String())
}

func (r *diffRun) modeName() string {
	if r.splits {
		return "ranges"
	}
	return "one-range"
}

// step runs one operation on both stores and compares the answers; it
// returns etcd's answer (nil on an error or when etcd was not asked).
func (r *diffRun) step(i int, op diffOp) proto.Message {
	r.t.Helper()
	desc := fmt.Sprintf("#%d %s", i, op)
	if op.req == nil {
		r.tally["split"]++
		r.split(op.split)
		r.history = append(r.history, desc)
		return nil
	}
	write := isWrite(op.req)
	r.wroteSince = r.wroteSince || write
	if write && r.splits && r.rangesTouched(op.req) > 1 {
		r.tally["write spanning ranges"]++
	}
	tReq := r.revs.request(op.req)
	tResp, tErr := r.tessera.do(tReq)
	if tErr != nil {
		if reason := r.allowedRefusal(op, tErr); reason != "" {
			r.tally["allowed: "+reason]++
			r.history = append(r.history, fmt.Sprintf("%s -> tessera: %v (allowed: %s; etcd not asked)", desc, tErr, reason))
			return nil
		}
	}
	eResp, eErr := r.etcd.do(op.req)
	r.history = append(r.history, fmt.Sprintf("%s -> %s", desc, describeAnswer(eResp, eErr)))
	r.count(op.req, eResp, eErr)
	if eErr == nil && tErr == nil {
		if e := responseHeader(eResp).GetRevision(); e > r.revs.current() {
			r.revs.record(e, responseHeader(tResp).GetRevision()) // if not, the answers differ below
		}
	}
	var unknown []int64
	if tErr == nil {
		if rr, ok := op.req.(*pb.RangeRequest); ok && !rr.Serializable {
			r.checkReadRevision(responseHeader(tResp).GetRevision())
		}
		tResp, unknown = r.revs.response(tResp)
	}
	if len(unknown) > 0 {
		r.fail("operation #%d: Tessera answered with revisions %v that no write of etcd's has\n  request: %s\n  tessera: %s", i, unknown, op, describeAnswer(tResp, nil))
	}
	if msg := diffAnswers(eResp, eErr, tResp, tErr); msg != "" {
		if eErr == nil && tErr == nil {
			if name := r.allowedDifference(op, withoutHeaderIDs(eResp), withoutHeaderIDs(tResp)); name != "" {
				r.tally["allowed: "+name]++
				r.history[len(r.history)-1] += fmt.Sprintf(" (tessera differs, allowed: %s)", name)
				return eResp
			}
		}
		r.fail("operation #%d differs:\n  request: %s\n  sent to Tessera as: %s\n%s", i, op, prototext.MarshalOptions{}.Format(tReq), msg)
	}
	if eErr != nil {
		return nil
	}
	return eResp
}

// count tallies a request and etcd's answer to it.
func (r *diffRun) count(req, resp proto.Message, err error) {
	kind := strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%T", req), "*etcdserverpb."), "Request")
	r.tally[kind]++
	if err != nil {
		r.tally["error "+status.Code(err).String()]++
		return
	}
	if txn, ok := resp.(*pb.TxnResponse); ok {
		walkMessages(txn, func(m proto.Message) {
			if t, ok := m.(*pb.TxnResponse); ok {
				r.tally[fmt.Sprintf("txn succeeded=%t", t.Succeeded)]++
			}
		})
	}
}

// checkReadRevision fails the run when a linearizable read answers at a
// revision other than the last one's with no write asked in between.
func (r *diffRun) checkReadRevision(rev int64) {
	r.t.Helper()
	if !r.wroteSince && rev != r.lastReadRev {
		r.fail("Tessera's read revision moved from %d to %d with no write asked since", r.lastReadRev, rev)
	}
	r.lastReadRev, r.wroteSince = rev, false
}

// isWrite reports whether Tessera runs req as a write command, which takes a
// revision: a Put, a DeleteRange, any Txn (read-only ones too), a lease
// revocation.
func isWrite(req proto.Message) bool {
	switch req.(type) {
	case *pb.PutRequest, *pb.DeleteRangeRequest, *pb.TxnRequest, *pb.LeaseRevokeRequest:
		return true
	}
	return false
}

// split splits Tessera's range at key; a key that is already a boundary is
// refused (FailedPrecondition) and changes nothing.
func (r *diffRun) split(key string) {
	r.t.Helper()
	var err error
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = r.cluster.Nodes[0].Server.SplitRange(ctx, key)
		cancel()
		if status.Code(err) != codes.Unavailable {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil && status.Code(err) != codes.FailedPrecondition {
		r.fail("split at %q: %v", key, err)
	}
}

// diffAllowances is the one place that lists where Tessera answers
// differently from etcd on purpose (or, marked so, until a known bug is
// fixed), each with its reason. Nothing else is excused.
//
// An allowance with refused set excuses Tessera refusing op with tErr: an
// allowed refusal changed nothing in Tessera, and etcd is not sent op, so
// the stores stay alike. One with differs set excuses Tessera's answer tResp
// to op differing from etcd's eResp (both already translated to etcd's
// revisions). One with neither is built into the comparison itself (revMap).
var diffAllowances = []struct {
	name, reason string
	refused      func(r *diffRun, op diffOp, tErr error) bool
	differs      func(r *diffRun, op diffOp, eResp, tResp proto.Message) bool
}{
	{
		name: "revision gaps",
		reason: "a write command takes its revision from the revision oracle before it is applied, " +
			"and one that then changes nothing (any Txn is a write command, read-only ones too; a " +
			"Txn whose branch taken writes nothing, a DeleteRange that finds nothing, a Put refused " +
			"by the state machine; a lease revocation takes two) leaves it unused; revisions still " +
			"only grow and a read's header is the state's (revMap translates, and checks reads never " +
			"move it)",
	},
	{
		name: "one version of a key per revision",
		reason: "a Txn that would write a key twice at its revision is refused as a duplicate key, " +
			"where etcd's check (v3rpc checkIntervals) misses two shapes and writes both versions: " +
			"a DeleteRange to the end of the key space (range_end \"\\x00\") with a Put in the " +
			"same txn, and a Put in a nested txn before a DeleteRange in a later one " +
			"(statemachine checkWrites); excused for txns with either a from-key DeleteRange or a " +
			"DeleteRange inside a nested txn",
		refused: func(r *diffRun, op diffOp, tErr error) bool {
			txn, ok := op.req.(*pb.TxnRequest)
			st, _ := status.FromError(tErr)
			return ok && st.Code() == codes.InvalidArgument &&
				st.Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCDuplicateKey) &&
				hasDeleteEtcdMayMiss(txn, false)
		},
	},
	{
		name: "a range's own revision in headers",
		reason: "a serializable Range, a LeaseGrant, and a LeaseRevoke that deletes no key answer " +
			"from one range without asking the revision oracle, with that range's revision in the " +
			"header: with several ranges, writes to the others may have moved the store's revision " +
			"past it (as a lagging etcd member's serializable read would be behind); excused when " +
			"the answers differ only by a header revision below etcd's",
		differs: func(r *diffRun, op diffOp, eResp, tResp proto.Message) bool {
			eRev, tRev := responseHeader(eResp).GetRevision(), responseHeader(tResp).GetRevision()
			switch req := op.req.(type) {
			case *pb.RangeRequest:
				if !req.Serializable {
					return false
				}
			case *pb.LeaseGrantRequest:
			case *pb.LeaseRevokeRequest:
				if eRev != r.revs.current() { // etcd deleted keys at a new revision
					return false
				}
			default:
				return false
			}
			t := proto.Clone(tResp)
			responseHeader(t).Revision = eRev
			return tRev < eRev && proto.Equal(t, eResp)
		},
	},
	{
		name: "serializable read at another range's revision",
		reason: "a serializable Range reads the range's replica as it is, without the revision " +
			"oracle's fence, so a revision above the range's own last one (taken by writes to " +
			"other ranges) is a future revision there, however long ago it was made",
		refused: func(r *diffRun, op diffOp, tErr error) bool {
			req, ok := op.req.(*pb.RangeRequest)
			st, _ := status.FromError(tErr)
			return ok && req.Serializable && req.Revision > 0 && r.splits &&
				st.Code() == codes.OutOfRange && st.Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev)
		},
	},
}

// hasDeleteEtcdMayMiss reports whether txn holds a DeleteRange etcd's
// duplicate-key check may miss: one to the end of the key space, or (nested)
// one inside a nested txn.
func hasDeleteEtcdMayMiss(txn *pb.TxnRequest, nested bool) bool {
	for _, ops := range [][]*pb.RequestOp{txn.Success, txn.Failure} {
		for _, op := range ops {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestDeleteRange:
				if nested || bytes.Equal(o.RequestDeleteRange.RangeEnd, []byte{0}) {
					return true
				}
			case *pb.RequestOp_RequestTxn:
				if hasDeleteEtcdMayMiss(o.RequestTxn, true) {
					return true
				}
			}
		}
	}
	return false
}

// allowedRefusal returns the name of the allowance that excuses Tessera's
// refusal of op, or "".
func (r *diffRun) allowedRefusal(op diffOp, tErr error) string {
	for _, a := range diffAllowances {
		if a.refused != nil && a.refused(r, op, tErr) {
			return a.name
		}
	}
	return ""
}

// allowedDifference returns the name of the allowance that excuses Tessera's
// answer differing from etcd's, or "".
func (r *diffRun) allowedDifference(op diffOp, eResp, tResp proto.Message) string {
	for _, a := range diffAllowances {
		if a.differs != nil && a.differs(r, op, eResp, tResp) {
			return a.name
		}
	}
	return ""
}

// rangesTouched is how many of Tessera's ranges the keys of a request lie in
// (for a Txn, every compare and operation, both branches, nested ones too).
func (r *diffRun) rangesTouched(req proto.Message) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ranges, err := r.cluster.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		r.fail("listing Tessera's ranges: %v", err)
	}
	touched := map[uint64]bool{}
	for _, sp := range requestSpans(req) {
		for _, rng := range ranges {
			if spansOverlap(sp, rng) {
				touched[rng.RangeId] = true
			}
		}
	}
	return len(touched)
}

func requestSpans(req proto.Message) [][2][]byte {
	switch r := req.(type) {
	case *pb.PutRequest:
		return [][2][]byte{{r.Key, nil}}
	case *pb.DeleteRangeRequest:
		return [][2][]byte{{r.Key, r.RangeEnd}}
	case *pb.RangeRequest:
		return [][2][]byte{{r.Key, r.RangeEnd}}
	case *pb.TxnRequest:
		var out [][2][]byte
		for _, c := range r.Compare {
			out = append(out, [2][]byte{c.Key, c.RangeEnd})
		}
		for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
			for _, op := range ops {
				switch o := op.Request.(type) {
				case *pb.RequestOp_RequestRange:
					out = append(out, requestSpans(o.RequestRange)...)
				case *pb.RequestOp_RequestPut:
					out = append(out, requestSpans(o.RequestPut)...)
				case *pb.RequestOp_RequestDeleteRange:
					out = append(out, requestSpans(o.RequestDeleteRange)...)
				case *pb.RequestOp_RequestTxn:
					out = append(out, requestSpans(o.RequestTxn)...)
				}
			}
		}
		return out
	}
	return nil
}

// spansOverlap reports whether the etcd span [key, end) (a single key when
// end is empty, to the end of the key space when end is "\x00") shares a key
// with a range.
func spansOverlap(sp [2][]byte, rng *tesserapb.RangeInfo) bool {
	key, end := string(sp[0]), string(sp[1])
	start, stop := string(rng.StartKey), string(rng.EndKey)
	if end == "" {
		return key >= start && (stop == "" || key < stop)
	}
	if end != "\x00" && end <= key {
		return false
	}
	return (end == "\x00" || end > start) && (stop == "" || key < stop)
}

// checkHistory reads every key at every revision both stores still hold and
// compares the answers.
func (r *diffRun) checkHistory(rev int64) {
	r.t.Helper()
	for at := int64(0); at <= rev; at++ {
		req := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: at}
		eResp, eErr := r.etcd.do(req)
		tResp, tErr := r.tessera.do(r.revs.request(req))
		if tErr == nil {
			tResp, _ = r.revs.response(tResp)
		}
		if msg := diffAnswers(eResp, eErr, tResp, tErr); msg != "" {
			r.fail("reading everything at revision %d after the run:\n%s", at, msg)
		}
	}
}

// diffAnswers compares etcd's answer with Tessera's and describes the
// difference, "" when there is none. Errors compare by gRPC code and
// message; responses field by field, the headers' cluster_id, member_id and
// raft_term excepted (they name the cluster, not the data).
func diffAnswers(eResp proto.Message, eErr error, tResp proto.Message, tErr error) string {
	if eErr != nil || tErr != nil {
		es, _ := status.FromError(eErr)
		ts, _ := status.FromError(tErr)
		if eErr != nil && tErr != nil && es.Code() == ts.Code() && es.Message() == ts.Message() {
			return ""
		}
		return fmt.Sprintf("  etcd:    %s\n  tessera: %s", describeAnswer(eResp, eErr), describeAnswer(tResp, tErr))
	}
	e, t := withoutHeaderIDs(eResp), withoutHeaderIDs(tResp)
	if proto.Equal(e, t) {
		return ""
	}
	return fmt.Sprintf("  etcd:    %s\n  tessera: %s", describeAnswer(e, nil), describeAnswer(t, nil))
}

func describeAnswer(resp proto.Message, err error) string {
	if err != nil {
		st, _ := status.FromError(err)
		return fmt.Sprintf("error %s %q", st.Code(), st.Message())
	}
	return fmt.Sprintf("%T %s", resp, prototext.MarshalOptions{}.Format(withoutHeaderIDs(resp)))
}

// withoutHeaderIDs returns a copy of m with every ResponseHeader in it, at
// any depth, reduced to its revision.
func withoutHeaderIDs(m proto.Message) proto.Message {
	m = proto.Clone(m)
	walkMessages(m, func(m proto.Message) {
		if h, ok := m.(*pb.ResponseHeader); ok {
			h.ClusterId, h.MemberId, h.RaftTerm = 0, 0, 0
		}
	})
	return m
}

// walkMessages calls visit on m and on every message inside it, at any
// depth, parents first.
func walkMessages(m proto.Message, visit func(proto.Message)) {
	walkReflect(m.ProtoReflect(), visit)
}

func walkReflect(m protoreflect.Message, visit func(proto.Message)) {
	visit(m.Interface())
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			for i := range v.List().Len() {
				walkReflect(v.List().Get(i).Message(), visit)
			}
		case fd.IsMap():
		default:
			walkReflect(v.Message(), visit)
		}
		return true
	})
}

// revMap pairs etcd's revisions with Tessera's. Tessera's revisions are
// etcd's with gaps (see diffAllowance): a write command takes its revision
// before it is applied, and one that then changes nothing (a Txn whose branch
// taken writes nothing, a DeleteRange that finds nothing) leaves that
// revision unused. The map is strictly increasing, so it keeps every
// comparison of revisions (compares, filters, reads at a revision,
// compactions) as it was; requests go to Tessera translated, and Tessera's
// answers are translated back before they are compared.
type revMap struct {
	tessera []int64 // tessera[e]: Tessera's revision of the write that made etcd's revision e
	etcdOf  map[int64]int64
}

// futureSlack puts a revision etcd does not have yet above every revision
// Tessera may have handed out, gaps included, so it is in the future there
// too.
const futureSlack = 1 << 30

func newRevMap(etcdFirst, tesseraFirst int64) *revMap {
	m := &revMap{etcdOf: map[int64]int64{}}
	for e := range etcdFirst + 1 {
		m.tessera = append(m.tessera, e)
		m.etcdOf[e] = e
	}
	m.tessera[etcdFirst] = tesseraFirst
	m.etcdOf[tesseraFirst] = etcdFirst
	return m
}

func (m *revMap) current() int64 { return int64(len(m.tessera) - 1) }

// record pairs etcd's new revision e with Tessera's t. It reports false when
// they cannot be paired: e is not etcd's next revision, or t is not above
// Tessera's last.
func (m *revMap) record(e, t int64) bool {
	if e != m.current()+1 || t <= m.tessera[m.current()] {
		return false
	}
	m.tessera = append(m.tessera, t)
	m.etcdOf[t] = e
	return true
}

// toTessera translates an etcd revision (or a number compared with one).
func (m *revMap) toTessera(e int64) int64 {
	switch cur := m.current(); {
	case e <= 0:
		return e
	case e <= cur:
		return m.tessera[e]
	default:
		return e - cur + m.tessera[cur] + futureSlack
	}
}

// headerToEtcd translates a header revision: the state Tessera's revision t
// names is the one after the last write at or below t.
func (m *revMap) headerToEtcd(t int64) int64 {
	e, _ := slices.BinarySearch(m.tessera, t+1)
	return int64(e) - 1
}

// kvToEtcd translates a key's create or mod revision, which must be the
// revision of a write; ok is false when no etcd write has it.
func (m *revMap) kvToEtcd(t int64) (e int64, ok bool) {
	if t == 0 {
		return 0, true
	}
	e, ok = m.etcdOf[t]
	return e, ok
}

// request returns req with every revision in it translated for Tessera.
func (m *revMap) request(req proto.Message) proto.Message {
	req = proto.Clone(req)
	walkMessages(req, func(msg proto.Message) {
		switch r := msg.(type) {
		case *pb.RangeRequest:
			for _, f := range []*int64{&r.Revision, &r.MinModRevision, &r.MaxModRevision, &r.MinCreateRevision, &r.MaxCreateRevision} {
				*f = m.toTessera(*f)
			}
		case *pb.Compare:
			switch u := r.TargetUnion.(type) {
			case *pb.Compare_CreateRevision:
				u.CreateRevision = m.toTessera(u.CreateRevision)
			case *pb.Compare_ModRevision:
				u.ModRevision = m.toTessera(u.ModRevision)
			}
		case *pb.CompactionRequest:
			r.Revision = m.toTessera(r.Revision)
		}
	})
	return req
}

// response returns Tessera's answer with its revisions translated to etcd's,
// and the revisions no etcd write has (left negated in the answer).
func (m *revMap) response(resp proto.Message) (proto.Message, []int64) {
	resp = proto.Clone(resp)
	var unknown []int64
	kvRev := func(f *int64) {
		e, ok := m.kvToEtcd(*f)
		if !ok {
			unknown = append(unknown, *f)
			e = -*f
		}
		*f = e
	}
	walkMessages(resp, func(msg proto.Message) {
		switch r := msg.(type) {
		case *pb.ResponseHeader:
			r.Revision = m.headerToEtcd(r.Revision)
		case *mvccpb.KeyValue:
			kvRev(&r.CreateRevision)
			kvRev(&r.ModRevision)
		}
	})
	return resp, unknown
}
