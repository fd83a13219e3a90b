package statemachine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// model is a deliberately naive MVCC store: every version of every key in a
// map, scanned in full for each question.
type model struct {
	versions   map[string][]modelVersion // ascending revision
	currentRev int64
	compacted  int64
	lastCmdRev int64
}

type modelVersion struct {
	rev int64
	kv  *mvccpb.KeyValue // nil: tombstone
}

func newModel() *model { return &model{versions: map[string][]modelVersion{}, currentRev: 1} }

func (m *model) at(key string, rev int64) *mvccpb.KeyValue {
	var out *mvccpb.KeyValue
	for _, v := range m.versions[key] {
		if v.rev <= rev {
			out = v.kv
		}
	}
	if out == nil {
		return nil
	}
	return proto.Clone(out).(*mvccpb.KeyValue)
}

func inSpan(k string, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return k == string(key)
	case string(end) == "\x00":
		return k >= string(key)
	default:
		return k >= string(key) && k < string(end)
	}
}

func (m *model) live(key, end []byte, rev int64) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for k := range m.versions {
		if inSpan(k, key, end) {
			if kv := m.at(k, rev); kv != nil {
				out = append(out, kv)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

func (m *model) rangeAt(r *pb.RangeRequest, cur int64) (*pb.RangeResponse, error) {
	rev := r.Revision
	if rev > cur {
		return nil, ErrFutureRev
	}
	if rev <= 0 {
		rev = cur
	}
	if rev < m.compacted {
		return nil, ErrCompacted
	}
	all := m.live(r.Key, r.RangeEnd, rev)
	resp := &pb.RangeResponse{Count: int64(len(all)), Kvs: []*mvccpb.KeyValue{}}
	if r.CountOnly {
		return resp, nil
	}
	var kvs []*mvccpb.KeyValue
	for _, kv := range all {
		if (r.MinModRevision == 0 || kv.ModRevision >= r.MinModRevision) &&
			(r.MaxModRevision == 0 || kv.ModRevision <= r.MaxModRevision) &&
			(r.MinCreateRevision == 0 || kv.CreateRevision >= r.MinCreateRevision) &&
			(r.MaxCreateRevision == 0 || kv.CreateRevision <= r.MaxCreateRevision) {
			kvs = append(kvs, kv)
		}
	}
	// etcd's quirk: order NONE with another target sorts ascending, but only
	// the first limit+1 keys.
	if r.SortOrder == pb.RangeRequest_NONE && r.Limit > 0 && int64(len(kvs)) > r.Limit+1 &&
		r.MinModRevision == 0 && r.MaxModRevision == 0 && r.MinCreateRevision == 0 && r.MaxCreateRevision == 0 {
		kvs = kvs[:r.Limit+1]
	}
	field := func(kv *mvccpb.KeyValue) string {
		switch r.SortTarget {
		case pb.RangeRequest_VERSION:
			return fmt.Sprintf("%020d", kv.Version)
		case pb.RangeRequest_CREATE:
			return fmt.Sprintf("%020d", kv.CreateRevision)
		case pb.RangeRequest_MOD:
			return fmt.Sprintf("%020d", kv.ModRevision)
		case pb.RangeRequest_VALUE:
			return string(kv.Value)
		}
		return string(kv.Key)
	}
	switch {
	case r.SortOrder == pb.RangeRequest_DESCEND:
		sort.SliceStable(kvs, func(i, j int) bool { return field(kvs[i]) > field(kvs[j]) })
	case r.SortOrder == pb.RangeRequest_ASCEND || r.SortTarget != pb.RangeRequest_KEY:
		sort.SliceStable(kvs, func(i, j int) bool { return field(kvs[i]) < field(kvs[j]) })
	}
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs, resp.More = kvs[:r.Limit], true
	}
	for _, kv := range kvs {
		if r.KeysOnly {
			kv.Value = nil
		}
	}
	resp.Kvs = append(resp.Kvs, kvs...)
	return resp, nil
}

// txn applies a flat txn (no nested txns) at rev; it returns the response
// and the model's own changes, or an error and no change.
func (m *model) txn(rev int64, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	ok := true
	for _, c := range req.Compare {
		kvs := m.live(c.Key, c.RangeEnd, m.currentRev)
		if len(kvs) == 0 {
			if c.Target == pb.Compare_VALUE {
				ok = false
			} else {
				ok = ok && compareKV(c, &mvccpb.KeyValue{})
			}
		}
		for _, kv := range kvs {
			ok = ok && compareKV(c, kv)
		}
	}
	ops := req.Failure
	if ok {
		ops = req.Success
	}
	// Duplicate check on both branches, written the naive way.
	for _, branchOps := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for i, a := range branchOps {
			for j, b := range branchOps {
				if i == j || a.GetRequestPut() == nil {
					continue
				}
				k := string(a.GetRequestPut().Key)
				if p := b.GetRequestPut(); p != nil && string(p.Key) == k {
					return nil, ErrDuplicateKey
				}
				if d := b.GetRequestDeleteRange(); d != nil && inSpan(k, d.Key, d.RangeEnd) {
					return nil, ErrDuplicateKey
				}
			}
		}
	}
	// Before it writes, the command reads the state at rev-1: every write to
	// the range below rev has been applied.
	before := rev - 1
	for _, op := range ops {
		if r := op.GetRequestRange(); r != nil {
			if _, err := m.rangeAt(r, before); err != nil {
				return nil, err
			}
		}
	}
	// Apply to a copy, so a failure could not leave a trace.
	next := map[string][]modelVersion{}
	for k, v := range m.versions {
		next[k] = append([]modelVersion(nil), v...)
	}
	work := &model{versions: next, currentRev: m.currentRev, compacted: m.compacted}
	changed := false
	readRev := func() int64 {
		if changed {
			return rev
		}
		return before
	}
	resp := &pb.TxnResponse{Succeeded: ok, Header: &pb.ResponseHeader{}}
	for _, op := range ops {
		switch {
		case op.GetRequestPut() != nil:
			p := op.GetRequestPut()
			prev := work.at(string(p.Key), readRev())
			kv := &mvccpb.KeyValue{Key: p.Key, Value: p.Value, CreateRevision: rev, ModRevision: rev, Version: 1}
			if prev != nil {
				kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
			}
			work.versions[string(p.Key)] = append(work.versions[string(p.Key)], modelVersion{rev, kv})
			changed = true
			pr := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: rev}}
			if p.PrevKv {
				pr.PrevKv = prev
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}})
		case op.GetRequestDeleteRange() != nil:
			d := op.GetRequestDeleteRange()
			prevs := work.live(d.Key, d.RangeEnd, readRev())
			for _, kv := range prevs {
				work.versions[string(kv.Key)] = append(work.versions[string(kv.Key)], modelVersion{rev, nil})
			}
			changed = changed || len(prevs) > 0
			dr := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: readRev()}, Deleted: int64(len(prevs))}
			if d.PrevKv {
				dr.PrevKvs = prevs
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}})
		case op.GetRequestRange() != nil:
			rr, err := work.rangeAt(op.GetRequestRange(), readRev())
			if err != nil {
				return nil, err
			}
			rr.Header = &pb.ResponseHeader{Revision: readRev()}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}})
		}
	}
	resp.Header.Revision = readRev()
	m.versions = work.versions
	if changed {
		m.currentRev = rev
	}
	return resp, nil
}

func (m *model) compact(c int64) error {
	if c <= m.compacted {
		return ErrCompacted
	}
	for k, vs := range m.versions {
		keepFrom := -1 // index of the newest version <= c
		for i, v := range vs {
			if v.rev <= c {
				keepFrom = i
			}
		}
		if keepFrom < 0 {
			continue
		}
		if vs[keepFrom].kv == nil {
			keepFrom++
		}
		m.versions[k] = vs[keepFrom:]
		if len(m.versions[k]) == 0 {
			delete(m.versions, k)
		}
	}
	m.compacted = c
	m.currentRev = max(m.currentRev, c)
	return nil
}

// rawDump lists the model's stored versions in storage order.
func (m *model) rawDump() []string {
	var out []string
	keys := make([]string, 0, len(m.versions))
	for k := range m.versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vs := m.versions[k]
		for i := len(vs) - 1; i >= 0; i-- {
			out = append(out, rawVersion{key: k, rev: vs[i].rev, kv: vs[i].kv}.String())
		}
	}
	return out
}

// ---- random operations ----

var modelKeys = []string{"a", "a\x00", "ab", "b", "c", "cc", "d", "\xff"}

func randKey(rng *rand.Rand) []byte { return []byte(modelKeys[rng.Intn(len(modelKeys))]) }

func randEnd(rng *rand.Rand, key []byte) []byte {
	switch rng.Intn(4) {
	case 0:
		return nil
	case 1:
		return []byte{0}
	default:
		return randKey(rng)
	}
}

func randOp(rng *rand.Rand, rev int64) *pb.RequestOp {
	switch rng.Intn(3) {
	case 0:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
			Key: randKey(rng), Value: []byte(fmt.Sprint(rng.Intn(5))), PrevKv: rng.Intn(2) == 0,
		}}}
	case 1:
		k := randKey(rng)
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{
			Key: k, RangeEnd: randEnd(rng, k), PrevKv: rng.Intn(2) == 0,
		}}}
	default:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: randRange(rng, rev)}}
	}
}

func randRange(rng *rand.Rand, rev int64) *pb.RangeRequest {
	k := randKey(rng)
	r := &pb.RangeRequest{Key: k, RangeEnd: randEnd(rng, k)}
	if rng.Intn(2) == 0 {
		r.Revision = rev - 3 + rng.Int63n(5)
	}
	if rng.Intn(2) == 0 {
		r.Limit = rng.Int63n(4)
	}
	if rng.Intn(3) == 0 {
		r.SortTarget = pb.RangeRequest_SortTarget(rng.Intn(5))
		r.SortOrder = pb.RangeRequest_SortOrder(rng.Intn(3))
	}
	r.KeysOnly = rng.Intn(5) == 0
	r.CountOnly = rng.Intn(8) == 0
	if rng.Intn(4) == 0 {
		r.MinModRevision = rng.Int63n(rev + 1)
	}
	if rng.Intn(4) == 0 {
		r.MaxCreateRevision = rng.Int63n(rev + 1)
	}
	return r
}

func randTxn(rng *rand.Rand, rev int64) *pb.TxnRequest {
	req := &pb.TxnRequest{}
	for i := rng.Intn(3); i > 0; i-- {
		k := randKey(rng)
		c := &pb.Compare{Key: k, Result: pb.Compare_CompareResult(rng.Intn(4)), Target: pb.Compare_CompareTarget(rng.Intn(5))}
		if rng.Intn(3) == 0 {
			c.RangeEnd = randEnd(rng, k)
		}
		n := rng.Int63n(rev + 1)
		switch c.Target {
		case pb.Compare_VERSION:
			c.TargetUnion = &pb.Compare_Version{Version: rng.Int63n(4)}
		case pb.Compare_CREATE:
			c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: n}
		case pb.Compare_MOD:
			c.TargetUnion = &pb.Compare_ModRevision{ModRevision: n}
		case pb.Compare_VALUE:
			c.TargetUnion = &pb.Compare_Value{Value: []byte(fmt.Sprint(rng.Intn(5)))}
		case pb.Compare_LEASE:
			c.TargetUnion = &pb.Compare_Lease{Lease: 0}
		}
		req.Compare = append(req.Compare, c)
	}
	for i := 1 + rng.Intn(3); i > 0; i-- {
		req.Success = append(req.Success, randOp(rng, rev))
	}
	for i := rng.Intn(3); i > 0; i-- {
		req.Failure = append(req.Failure, randOp(rng, rev))
	}
	return req
}

// TestRandomAgainstModel applies random commands to the state machine and to
// the model, in random Update batches, and compares every result, reads at
// random revisions, and the stored versions.
func TestRandomAgainstModel(t *testing.T) {
	seed := time.Now().UnixNano()
	iterations := 1500
	if testing.Short() {
		iterations = 300
	}
	t.Logf("seed %d", seed)
	defer func() {
		if t.Failed() {
			t.Logf("failed with seed %d", seed)
		}
	}()
	runRandom(t, seed, iterations)
}

func runRandom(t *testing.T, seed int64, iterations int) {
	rng := rand.New(rand.NewSource(seed))
	h := newHarness(t)
	m := newModel()
	rev := int64(1)   // the oracle
	floor := int64(1) // the range's floor before the iteration's Update
	type pending struct {
		cmd    []byte
		expect func(res *tesserapb.Result) string // "" when as expected
	}
	expectErr := func(want error) func(*tesserapb.Result) string {
		return func(res *tesserapb.Result) string {
			if got := ErrorFromResult(res); !errors.Is(got, want) {
				return fmt.Sprintf("got error %v, want %v", got, want)
			}
			return ""
		}
	}
	expectResp := func(want proto.Message) func(*tesserapb.Result) string {
		return func(res *tesserapb.Result) string {
			if err := ErrorFromResult(res); err != nil {
				return fmt.Sprintf("got error %v, want %v", err, want)
			}
			got := want.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(res.Response, got); err != nil {
				return err.Error()
			}
			if !proto.Equal(got, want) {
				return fmt.Sprintf("got  %v\nwant %v", got, want)
			}
			return ""
		}
	}
	for it := 0; it < iterations; it++ {
		var batch []pending
		for n := 1 + rng.Intn(4); n > 0; n-- {
			switch p := rng.Intn(20); {
			case p < 15:
				rev++
				req := randTxn(rng, rev)
				cmd := txnCmd(t, rev, req)
				if rev <= max(m.lastCmdRev, m.currentRev, m.compacted) {
					// A compaction above the range's last write took this
					// revision away: the write is refused.
					batch = append(batch, pending{cmd, expectErr(ErrStaleRevision)})
					continue
				}
				resp, err := m.txn(rev, req)
				if err != nil {
					batch = append(batch, pending{cmd, expectErr(err)})
				} else {
					m.lastCmdRev = rev
					batch = append(batch, pending{cmd, expectResp(resp)})
				}
			case p < 17:
				c := m.compacted - 1 + rng.Int63n(m.currentRev-m.compacted+3)
				cmd := mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_Compact{Compact: &tesserapb.CompactCommand{Revision: c}}})
				if err := m.compact(c); err != nil {
					batch = append(batch, pending{cmd, expectErr(err)})
				} else {
					batch = append(batch, pending{cmd, expectResp(&pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: m.currentRev}})})
				}
			default:
				// A stale revision changes nothing.
				stale := max(1, max(m.lastCmdRev, m.currentRev)-rng.Int63n(3))
				cmd := txnCmd(t, stale, &pb.TxnRequest{Success: []*pb.RequestOp{randOp(rng, rev)}})
				batch = append(batch, pending{cmd, expectErr(ErrStaleRevision)})
			}
		}
		cmds := make([][]byte, len(batch))
		for i, p := range batch {
			cmds[i] = p.cmd
		}
		floorBefore := floor
		floor = max(m.lastCmdRev, m.currentRev, m.compacted)
		h.takeApplied()
		update := h.update
		if rng.Intn(2) == 0 {
			update = func(cmds ...[]byte) []*tesserapb.Result { return h.updatePacked(rng, cmds...) }
		}
		for i, res := range update(cmds...) {
			if msg := batch[i].expect(res); msg != "" {
				t.Fatalf("iteration %d command %d: %s", it, i, msg)
			}
		}
		checkPublished(t, h, it, floorBefore, floor, m.compacted)
		// Reads at random revisions, through Range and RangeStream.
		v := h.view()
		if v.Revision() != m.currentRev || v.CompactRevision() != m.compacted {
			t.Fatalf("iteration %d: rev %d compacted %d, model %d %d", it, v.Revision(), v.CompactRevision(), m.currentRev, m.compacted)
		}
		for n := 0; n < 3; n++ {
			req := randRange(rng, m.currentRev)
			want, wantErr := m.rangeAt(req, m.currentRev)
			got, err := v.Range(req)
			if !errors.Is(err, wantErr) || (err == nil && !proto.Equal(got, want)) {
				t.Fatalf("iteration %d: Range(%v)\ngot  %v %v\nwant %v %v", it, req, got, err, want, wantErr)
			}
			if WireRangeable(req) {
				checkRangeWire(t, v, req, want, wantErr)
			}
			var streamed []*mvccpb.KeyValue
			count, more, err := v.RangeStream(req, 1+rng.Intn(3), func(kvs []*mvccpb.KeyValue) error {
				streamed = append(streamed, kvs...)
				return nil
			})
			if !errors.Is(err, wantErr) || (err == nil && (count != want.Count || more != want.More ||
				!proto.Equal(&pb.RangeResponse{Kvs: streamed}, &pb.RangeResponse{Kvs: want.Kvs}))) {
				t.Fatalf("iteration %d: RangeStream(%v) = %v %d %v %v, want %v", it, req, streamed, count, more, err, want)
			}
		}
		gotRaw := rawVersions(t, v.snap.snap)
		v.Close()
		var got []string
		for _, r := range gotRaw {
			got = append(got, r.String())
		}
		if want := m.rawDump(); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("iteration %d: stored versions\n%s\nmodel\n%s", it, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Now and then: restart, or move to another store by snapshot.
		switch rng.Intn(60) {
		case 0:
			h.restart()
		case 1:
			snap := h.saveSnapshot(t)
			h.close()
			h.openStore(t.TempDir(), nil)
			if err := h.rsm.RecoverFromSnapshot(bytes.NewReader(snap), nil); err != nil {
				t.Fatal(err)
			}
		}
		if it%25 == 0 {
			checkHistoryModes(t, h, it, m.compacted+1, floor)
			want := len(m.live([]byte{0}, []byte{0}, rev))
			if n, err := h.store.CountLiveKeys(); err != nil || n != int64(want) {
				t.Fatalf("iteration %d: CountLiveKeys = %d, %v; the model has %d live keys", it, n, err, want)
			}
		}
	}
}

// checkPublished: what the range published for one Update (OnApply) is its
// floor and exactly the events that History reads back for the revisions
// the Update covered, previous versions included.
func checkPublished(t *testing.T, h *harness, it int, floorBefore, floor, compacted int64) {
	t.Helper()
	applied := h.takeApplied()
	if len(applied) != 1 || applied[0].Reset || applied[0].Floor != floor || applied[0].RangeID != testRangeID {
		t.Fatalf("iteration %d: published %+v, want one Applied with floor %d", it, applied, floor)
	}
	if floorBefore+1 <= compacted {
		return // the window's oldest versions may be compacted away
	}
	want := &pb.WatchResponse{Events: applied[0].Events}
	// Read by keys and by the revision index, each the whole window at
	// once and two events at a time (whole revisions).
	defer func() { h.store.historyMode = historyEither }()
	for _, mode := range []int{historyByKeys, historyByIndex} {
		h.store.historyMode = mode
		hist, covered, err := h.store.History([]byte{0}, []byte{0}, floorBefore+1, floor, 1000)
		if err != nil || covered != floor {
			t.Fatalf("iteration %d, mode %d: History(%d, %d) covered %d: %v", it, mode, floorBefore+1, floor, covered, err)
		}
		if got := (&pb.WatchResponse{Events: hist}); !proto.Equal(got, want) {
			t.Fatalf("iteration %d, mode %d: History(%d, %d)\n%v\npublished\n%v", it, mode, floorBefore+1, floor, got, want)
		}
		var paged []*mvccpb.Event
		for from := floorBefore + 1; from <= floor; {
			evs, covered, err := h.store.History([]byte{0}, []byte{0}, from, floor, 2)
			if err != nil || covered < from || (len(evs) > 2 && evs[0].Kv.ModRevision != evs[len(evs)-1].Kv.ModRevision) {
				t.Fatalf("iteration %d, mode %d: History(%d, %d, 2) = %d events, covered %d: %v", it, mode, from, floor, len(evs), covered, err)
			}
			paged = append(paged, evs...)
			from = covered + 1
		}
		if got := (&pb.WatchResponse{Events: paged}); !proto.Equal(got, want) {
			t.Fatalf("iteration %d, mode %d: History(%d, %d) two at a time\n%v\npublished\n%v", it, mode, floorBefore+1, floor, got, want)
		}
	}
}

// checkHistoryModes: History reads the same events from revision from to
// to by keys and by the revision index.
func checkHistoryModes(t *testing.T, h *harness, it int, from, to int64) {
	t.Helper()
	defer func() { h.store.historyMode = historyEither }()
	var got [2]*pb.WatchResponse
	for i, mode := range []int{historyByKeys, historyByIndex} {
		h.store.historyMode = mode
		evs, covered, err := h.store.History([]byte{0}, []byte{0}, from, to, 1<<30)
		if err != nil || covered != to {
			t.Fatalf("iteration %d, mode %d: History(%d, %d) covered %d: %v", it, mode, from, to, covered, err)
		}
		got[i] = &pb.WatchResponse{Events: evs}
	}
	if !proto.Equal(got[0], got[1]) {
		t.Fatalf("iteration %d: History(%d, %d) by keys\n%v\nby the revision index\n%v", it, from, to, got[0], got[1])
	}
}

// checkRangeWire checks that RangeWire answers req with the bytes of want's
// kvs as proto.Marshal encodes them, and want's count and more.
func checkRangeWire(t *testing.T, v *View, req *pb.RangeRequest, want *pb.RangeResponse, wantErr error) {
	t.Helper()
	got, err := v.RangeWire(req)
	if !errors.Is(err, wantErr) {
		t.Fatalf("RangeWire(%v): error %v, want %v", req, err, wantErr)
	}
	if err != nil {
		return
	}
	wantBytes, err := proto.Marshal(&pb.RangeResponse{Kvs: want.Kvs})
	if err != nil {
		t.Fatal(err)
	}
	if gotBytes := bytes.Join(got.KVs.Chunks(), nil); !bytes.Equal(gotBytes, wantBytes) || got.KVs.Len() != len(want.Kvs) ||
		got.Count != want.Count || got.More != want.More {
		t.Fatalf("RangeWire(%v) = %d kvs %x count %d more %v, want %v", req, got.KVs.Len(), gotBytes, got.Count, got.More, want)
	}
	// The same answer streamed kv by kv, cut into pieces of at most
	// pieceSize kvs by the caller.
	pieceSize := 1 + len(want.Kvs)%3
	var pieces []*WireKVs
	count, more, err := v.RangeStreamWire(req, func() (*WireKVs, error) {
		if len(pieces) == 0 || pieces[len(pieces)-1].Len() == pieceSize {
			pieces = append(pieces, &WireKVs{})
		}
		return pieces[len(pieces)-1], nil
	})
	var streamed [][]byte
	n := 0
	for _, w := range pieces {
		n += w.Len()
		streamed = append(streamed, w.Chunks()...)
	}
	if err != nil || count != want.Count || more != want.More || n != len(want.Kvs) || !bytes.Equal(bytes.Join(streamed, nil), wantBytes) {
		t.Fatalf("RangeStreamWire(%v) = %d kvs count %d more %v %v, want %v", req, n, count, more, err, want)
	}
	var chunks [][]byte
	for i := range got.KVs.NumChunks() {
		chunks = append(chunks, got.KVs.Chunk(i))
	}
	if !bytes.Equal(bytes.Join(chunks, nil), wantBytes) {
		t.Fatalf("RangeWire(%v): Chunk(i) for i < NumChunks() disagrees with Chunks()", req)
	}
	// The same kvs added decoded (as a router adds another node's answer),
	// half of them after the first half was moved in with Append.
	var first, second WireKVs
	for i, kv := range want.Kvs {
		if i < len(want.Kvs)/2 {
			first.AddKV(kv)
		} else {
			second.AddKV(kv)
		}
	}
	first.Append(&second)
	if added := bytes.Join(first.Chunks(), nil); !bytes.Equal(added, wantBytes) || first.Len() != len(want.Kvs) {
		t.Fatalf("AddKV and Append of %v: %d kvs %x, want %x", want.Kvs, first.Len(), added, wantBytes)
	}
}
