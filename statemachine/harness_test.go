package statemachine

import (
	"bytes"
	"fmt"
	"math/rand"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

const testRangeID = 7

// harness drives RangeSMs of one Store the way Dragonboat does: commands
// become entries with increasing indexes (per range), handed to Update in
// batches. Range testRangeID is always open (rsm, index); others are opened
// by splits (from StoreOptions.OnSplit, as the node does) or by a snapshot
// recovery into a range the store does not run yet.
type harness struct {
	t       testing.TB
	dir     string
	store   *Store
	rsm     *RangeSM
	index   uint64            // last Raft index handed to rsm's Update
	others  map[uint64]*other // the other open ranges, by range ID
	lastRev int64             // highest revision handed out (one oracle for all ranges)
	saved   map[string][]byte // snapshots taken by snapshot-save, by name
	// splitLog holds a line per OnSplit call not yet printed.
	splitLog []string
	// appliedMu guards applied.
	appliedMu sync.Mutex
	// applied holds what StoreOptions.OnApply received, in order.
	applied []Applied
}

func (h *harness) onApply(a Applied) {
	h.appliedMu.Lock()
	defer h.appliedMu.Unlock()
	h.applied = append(h.applied, a)
}

// takeApplied returns what OnApply received since the last call.
func (h *harness) takeApplied() []Applied {
	h.appliedMu.Lock()
	defer h.appliedMu.Unlock()
	out := h.applied
	h.applied = nil
	return out
}

// other is an open range other than testRangeID.
type other struct {
	rsm   *RangeSM
	index uint64
}

func newHarness(t testing.TB) *harness {
	h := &harness{t: t, lastRev: 1, saved: map[string][]byte{}} // revision 1 is the empty store's
	h.openStore(t.TempDir(), nil)
	t.Cleanup(h.close)
	return h
}

// openStore opens the store in dir, and in it range testRangeID and the
// ranges otherIDs.
func (h *harness) openStore(dir string, otherIDs []uint64) {
	h.t.Helper()
	s, err := OpenStore(dir, StoreOptions{CacheSizeBytes: 1 << 20, OnSplit: h.onSplit, OnApply: h.onApply})
	if err != nil {
		h.t.Fatal(err)
	}
	h.dir, h.store, h.others = dir, s, map[uint64]*other{}
	h.rsm, h.index = h.startRange(testRangeID)
	for _, id := range otherIDs {
		h.addRange(id)
	}
}

// startRange creates and opens a range's state machine in the store.
func (h *harness) startRange(rangeID uint64) (*RangeSM, uint64) {
	h.t.Helper()
	rsm := h.store.CreateStateMachine(rangeID, 1).(*RangeSM)
	idx, err := rsm.Open(nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return rsm, idx
}

func (h *harness) addRange(rangeID uint64) *other {
	rsm, idx := h.startRange(rangeID)
	o := &other{rsm: rsm, index: idx}
	h.others[rangeID] = o
	return o
}

// onSplit is StoreOptions.OnSplit: it checks that the split has committed
// (the child's metadata is readable, the parent's bounds already shrunk) and
// starts the child as the node would.
func (h *harness) onSplit(parentID, childID uint64) {
	childBounds, found, err := storedBounds(h.store.db, childID)
	if err != nil || !found {
		h.t.Errorf("OnSplit(%d, %d): the child's metadata is not committed (%v)", parentID, childID, err)
		return
	}
	parentStart, parentEnd := h.rangeSM(parentID).Bounds()
	if !bytes.Equal(parentEnd, childBounds.start) {
		h.t.Errorf("OnSplit(%d, %d): parent bounds [%q, %q) do not end where the child %s starts",
			parentID, childID, parentStart, parentEnd, childBounds)
	}
	o := h.addRange(childID)
	h.splitLog = append(h.splitLog, fmt.Sprintf("on-split %d -> %d: child opened at applied index %d, bounds %s",
		parentID, childID, o.index, childBounds))
}

// rangeSM returns an open range's state machine.
func (h *harness) rangeSM(rangeID uint64) *RangeSM {
	if rangeID == testRangeID {
		return h.rsm
	}
	if o := h.others[rangeID]; o != nil {
		return o.rsm
	}
	h.t.Fatalf("range %d is not open", rangeID)
	return nil
}

// indexOf points at the last index handed to an open range's Update.
func (h *harness) indexOf(rangeID uint64) *uint64 {
	if rangeID == testRangeID {
		return &h.index
	}
	h.rangeSM(rangeID)
	return &h.others[rangeID].index
}

// openRanges returns the IDs of the open ranges, ascending.
func (h *harness) openRanges() []uint64 {
	ids := []uint64{testRangeID}
	for id := range h.others {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (h *harness) close() {
	if h.store == nil {
		return
	}
	for _, id := range h.openRanges() {
		if err := h.rangeSM(id).Close(); err != nil {
			h.t.Error(err)
		}
	}
	if err := h.store.Close(); err != nil {
		h.t.Error(err)
	}
	h.store = nil
}

// restart closes the store and opens it again from disk, with the same
// ranges open.
func (h *harness) restart() {
	dir := h.dir
	var otherIDs []uint64
	for _, id := range h.openRanges() {
		if id != testRangeID {
			otherIDs = append(otherIDs, id)
		}
	}
	h.close()
	h.openStore(dir, otherIDs)
}

func (h *harness) nextRev() int64 {
	h.lastRev++
	return h.lastRev
}

// update hands cmds to range testRangeID's Update as one batch and returns
// the decoded results.
func (h *harness) update(cmds ...[]byte) []*tesserapb.Result {
	h.t.Helper()
	return h.updateOn(testRangeID, cmds...)
}

// updateOn hands cmds to rangeID's Update as one batch.
func (h *harness) updateOn(rangeID uint64, cmds ...[]byte) []*tesserapb.Result {
	h.t.Helper()
	out := h.updateEntries(rangeID, cmds)
	results := make([]*tesserapb.Result, len(out))
	for i, e := range out {
		res, err := DecodeResult(e.Result)
		if err != nil {
			h.t.Fatal(err)
		}
		if uint64(res.Code) != e.Result.Value {
			h.t.Fatalf("result value %d, code %d", e.Result.Value, res.Code)
		}
		results[i] = res
	}
	return results
}

// updateEntries hands cmds to rangeID's Update as the entries after the
// last it applied, and returns the entries with their results.
func (h *harness) updateEntries(rangeID uint64, cmds [][]byte) []sm.Entry {
	h.t.Helper()
	rsm, index := h.rangeSM(rangeID), h.indexOf(rangeID)
	entries := make([]sm.Entry, len(cmds))
	for i, c := range cmds {
		*index++
		entries[i] = sm.Entry{Index: *index, Cmd: c}
	}
	out, err := rsm.Update(entries)
	if err != nil {
		h.t.Fatalf("Update: %v", err)
	}
	return out
}

// updatePacked is update with consecutive commands packed at random into
// BatchCommand entries, as the proposer packs writes; it returns each
// command's result, unpacked.
func (h *harness) updatePacked(rng *rand.Rand, cmds ...[]byte) []*tesserapb.Result {
	h.t.Helper()
	var entries [][]byte
	var sizes []int // commands per entry; 0 for an unpacked one
	for i := 0; i < len(cmds); {
		n := 1 + rng.Intn(len(cmds)-i)
		if n == 1 && rng.Intn(2) == 0 {
			entries, sizes = append(entries, cmds[i]), append(sizes, 0)
			i++
			continue
		}
		batch := &tesserapb.BatchCommand{}
		for _, c := range cmds[i : i+n] {
			cmd := &tesserapb.Command{}
			if err := proto.Unmarshal(c, cmd); err != nil {
				h.t.Fatal(err)
			}
			batch.Commands = append(batch.Commands, cmd)
		}
		entries = append(entries, mustMarshal(h.t, &tesserapb.Command{Op: &tesserapb.Command_Batch{Batch: batch}}))
		sizes = append(sizes, n)
		i += n
	}
	var results []*tesserapb.Result
	for i, e := range h.updateEntries(testRangeID, entries) {
		each := []sm.Result{e.Result}
		if sizes[i] > 0 {
			var err error
			if each, err = DecodeBatchResult(e.Result, sizes[i]); err != nil {
				h.t.Fatal(err)
			}
		}
		for _, r := range each {
			res, err := DecodeResult(r)
			if err != nil {
				h.t.Fatal(err)
			}
			results = append(results, res)
		}
	}
	return results
}

func (h *harness) view() *View {
	h.t.Helper()
	return h.viewOf(testRangeID)
}

func (h *harness) viewOf(rangeID uint64) *View {
	h.t.Helper()
	v, err := h.rangeSM(rangeID).View()
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func txnCmd(t testing.TB, rev int64, req *pb.TxnRequest) []byte {
	return mustMarshal(t, &tesserapb.Command{Revision: rev, Op: &tesserapb.Command_Txn{
		Txn: &tesserapb.TxnCommand{Request: mustMarshal(t, req)},
	}})
}

// ---- datadriven ----

func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := newHarness(t)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.run(t, d)
		})
	})
}

// unq decodes Go escapes in an argument value (e.g. end=\x00).
func unq(t testing.TB, s string) []byte {
	u, err := strconv.Unquote(`"` + s + `"`)
	if err != nil {
		t.Fatalf("bad value %q: %v", s, err)
	}
	return []byte(u)
}

func argBytes(t testing.TB, d *datadriven.TestData, key string) []byte {
	if !d.HasArg(key) {
		return nil
	}
	var s string
	d.ScanArgs(t, key, &s)
	return unq(t, s)
}

func argInt(t testing.TB, d *datadriven.TestData, key string, def int64) int64 {
	if !d.HasArg(key) {
		return def
	}
	var v int64
	d.ScanArgs(t, key, &v)
	return v
}

// cmdRev is the revision a directive's command carries: rev= when given,
// otherwise a fresh one for writing commands and 0 for the others.
func (h *harness) cmdRev(t testing.TB, d *datadriven.TestData, writes bool) int64 {
	if d.HasArg("rev") {
		r := argInt(t, d, "rev", 0)
		h.lastRev = max(h.lastRev, r)
		return r
	}
	if writes {
		return h.nextRev()
	}
	return 0
}

// command builds the command of an update directive; kind says how to print
// its response.
func (h *harness) command(t testing.TB, d *datadriven.TestData) (cmd []byte, kind string) {
	switch d.Cmd {
	case "put":
		req := &pb.PutRequest{
			Key:         argBytes(t, d, "k"),
			Value:       argBytes(t, d, "v"),
			Lease:       argInt(t, d, "lease", 0),
			PrevKv:      d.HasArg("prev-kv"),
			IgnoreValue: d.HasArg("ignore-value"),
			IgnoreLease: d.HasArg("ignore-lease"),
		}
		txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: req}}}}
		if !d.HasArg("attach-proof") {
			return txnCmd(t, h.cmdRev(t, d, true), txn), "op"
		}
		// The Put gives the range the lease's record (TxnCommand.attach).
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, true), Op: &tesserapb.Command_Txn{
			Txn: &tesserapb.TxnCommand{Request: mustMarshal(t, txn), Attach: []*tesserapb.LeaseAttach{{
				Id: req.Lease, TtlSeconds: argInt(t, d, "attach-ttl", 0), ProofRevision: argInt(t, d, "attach-proof", 0),
			}}},
		}}), "op"
	case "del":
		req := &pb.DeleteRangeRequest{
			Key:      argBytes(t, d, "k"),
			RangeEnd: argBytes(t, d, "end"),
			PrevKv:   d.HasArg("prev-kv"),
		}
		return txnCmd(t, h.cmdRev(t, d, true), &pb.TxnRequest{Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: req}},
		}}), "op"
	case "txn":
		req := &pb.TxnRequest{}
		if err := prototext.Unmarshal([]byte(d.Input), req); err != nil {
			t.Fatalf("%s: bad txn: %v", d.Pos, err)
		}
		return txnCmd(t, h.cmdRev(t, d, true), req), "txn"
	case "compact":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_Compact{
			Compact: &tesserapb.CompactCommand{Revision: argInt(t, d, "at", 0)},
		}}), "compact"
	case "lease-grant":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_LeaseGrant{
			LeaseGrant: &tesserapb.LeaseGrantCommand{Id: argInt(t, d, "id", 0), TtlSeconds: argInt(t, d, "ttl", 0), TrackSpans: d.HasArg("track")},
		}}), "lease-grant"
	case "lease-revoke":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, true), Op: &tesserapb.Command_LeaseRevoke{
			LeaseRevoke: &tesserapb.LeaseRevokeCommand{Id: argInt(t, d, "id", 0), WithoutRecord: d.HasArg("without-record"), KeepRecord: d.HasArg("keep")},
		}}), "lease-revoke"
	case "lease-mark":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_LeaseMark{
			LeaseMark: &tesserapb.LeaseMarkCommand{Id: argInt(t, d, "id", 0)},
		}}), "lease-record"
	case "lease-register":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_LeaseRegister{
			LeaseRegister: &tesserapb.LeaseRegisterCommand{Id: argInt(t, d, "id", 0), Span: &tesserapb.KeySpan{Start: argBytes(t, d, "start"), End: argBytes(t, d, "end")}},
		}}), "lease-record"
	case "barrier":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_Barrier{
			Barrier: &tesserapb.BarrierCommand{},
		}}), "none"
	case "split":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_Split{
			Split: &tesserapb.SplitCommand{SplitKey: argBytes(t, d, "at"), NewRangeId: uint64(argInt(t, d, "id", 0))},
		}}), "none"
	case "txn-hold":
		// txn-hold id=S [rev=N]: the input is the whole request, in
		// prototext.
		req := &pb.TxnRequest{}
		if err := prototext.Unmarshal([]byte(d.Input), req); err != nil {
			t.Fatalf("%s: bad txn: %v", d.Pos, err)
		}
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, true), Op: &tesserapb.Command_TxnHold{
			TxnHold: &tesserapb.TxnHoldCommand{TxnId: argBytes(t, d, "id"), Request: mustMarshal(t, req)},
		}}), "txn-hold"
	case "txn-commit":
		// txn-commit id=S path=(true,false,...) [rev=N]
		var path []bool
		if d.HasArg("path") {
			var words []string
			d.ScanArgs(t, "path", &words)
			for _, w := range words {
				b, err := strconv.ParseBool(w)
				if err != nil {
					t.Fatalf("%s: bad path %q", d.Pos, w)
				}
				path = append(path, b)
			}
		}
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, true), Op: &tesserapb.Command_TxnCommit{
			TxnCommit: &tesserapb.TxnCommitCommand{TxnId: argBytes(t, d, "id"), Path: path},
		}}), "txn"
	case "txn-abort":
		return mustMarshal(t, &tesserapb.Command{Revision: h.cmdRev(t, d, false), Op: &tesserapb.Command_TxnAbort{
			TxnAbort: &tesserapb.TxnAbortCommand{TxnId: argBytes(t, d, "id")},
		}}), "none"
	case "garbage":
		return []byte{0xff, 0xff, 0xff}, "none"
	}
	return nil, ""
}

// rangeArg is the range a directive addresses: range=N, testRangeID by
// default.
func rangeArg(t testing.TB, d *datadriven.TestData) uint64 {
	return uint64(argInt(t, d, "range", testRangeID))
}

// flushSplitLog returns the OnSplit lines not yet printed.
func (h *harness) flushSplitLog() string {
	var b strings.Builder
	for _, line := range h.splitLog {
		b.WriteString(line + "\n")
	}
	h.splitLog = nil
	return b.String()
}

// status is one range's status line.
func (h *harness) status(rangeID uint64) string {
	v := h.viewOf(rangeID)
	defer v.Close()
	return statusLine(v)
}

// statusLine is a view's revisions and applied index (and its lease floor,
// once a revocation raised it).
func statusLine(v *View) string {
	line := fmt.Sprintf("rev=%d compacted=%d applied=%d last-cmd-rev=%d",
		v.Revision(), v.CompactRevision(), v.AppliedIndex(), v.LastCommandRevision())
	if f := v.state.leaseFloor; f != 0 {
		line += fmt.Sprintf(" lease-floor=%d", f)
	}
	if h := v.state.hold; h != nil {
		line += fmt.Sprintf(" held-by=%s since=%d", h.TxnId, h.Revision)
	}
	return line + "\n"
}

// rangesStatus lists every open range: bounds, generation and status.
func (h *harness) rangesStatus() string {
	var b strings.Builder
	for _, id := range h.openRanges() {
		v := h.viewOf(id)
		start, end := v.Bounds()
		fmt.Fprintf(&b, "range %d %s: %s", id, bounds{start: start, end: end, generation: v.Generation()}, h.status(id))
		v.Close()
	}
	return b.String()
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	rangeID := rangeArg(t, d)
	if cmd, kind := h.command(t, d); cmd != nil {
		res := h.updateOn(rangeID, cmd)[0]
		return formatResult(t, res, kind) + h.flushSplitLog()
	}
	switch d.Cmd {
	case "batch":
		// Each input line is an update directive; all go to Update at once.
		var cmds [][]byte
		var kinds []string
		for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
			cmdName, args, err := datadriven.ParseLine(line)
			if err != nil {
				t.Fatal(err)
			}
			sub := &datadriven.TestData{Pos: d.Pos, Cmd: cmdName, CmdArgs: args}
			cmd, kind := h.command(t, sub)
			if cmd == nil {
				t.Fatalf("%s: %q is not an update directive", d.Pos, line)
			}
			cmds = append(cmds, cmd)
			kinds = append(kinds, kind)
		}
		var b strings.Builder
		for i, res := range h.updateOn(rangeID, cmds...) {
			fmt.Fprintf(&b, "%d: %s", i, formatResult(t, res, kinds[i]))
		}
		return b.String() + h.flushSplitLog()
	case "get", "stream":
		req := rangeRequest(t, d)
		v := h.viewOf(rangeID)
		defer v.Close()
		if d.Cmd == "get" {
			resp, err := v.Range(req)
			if err != nil {
				return fmt.Sprintf("error: %v\n", err)
			}
			var b strings.Builder
			formatRange(&b, "", resp)
			return b.String()
		}
		var b strings.Builder
		count, more, err := v.RangeStream(req, int(argInt(t, d, "chunk", 2)), func(kvs []*mvccpb.KeyValue) error {
			fmt.Fprintf(&b, "chunk\n")
			for _, kv := range kvs {
				fmt.Fprintf(&b, "  %s\n", formatKV(kv))
			}
			return nil
		})
		if err != nil {
			return fmt.Sprintf("error: %v\n", err)
		}
		fmt.Fprintf(&b, "count=%d more=%t\n", count, more)
		return b.String()
	case "status":
		return h.status(rangeID)
	case "ranges":
		return h.rangesStatus()
	case "lease":
		v := h.viewOf(rangeID)
		defer v.Close()
		rec, keys, err := v.Lease(argInt(t, d, "id", 0))
		if err != nil {
			return fmt.Sprintf("error: %v\n", err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "lease %d ttl=%d keys=[", rec.Id, rec.TtlSeconds)
		for i, k := range keys {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(strconv.Quote(string(k)))
		}
		b.WriteString("]\n")
		return b.String()
	case "leases":
		v := h.viewOf(rangeID)
		defer v.Close()
		var b strings.Builder
		for _, line := range strings.SplitAfter(dumpLeasesMembers(t, v), "\n") {
			if strings.HasPrefix(line, strings.TrimSuffix(d.Cmd, "s")) || line == "none\n" {
				b.WriteString(line)
			}
		}
		return b.String()
	case "dump":
		return h.dumpOf(t, rangeID)
	case "dump-store":
		return dumpStore(t, h.store.db)
	case "flush":
		// Writes the memtable to an sstable, so later lookups go through
		// the tables' blocks and filters.
		if err := h.store.db.Flush(); err != nil {
			t.Fatal(err)
		}
		return "ok"
	case "restart":
		h.restart()
		if len(h.others) == 0 {
			return h.status(testRangeID)
		}
		return h.rangesStatus()
	case "snapshot-save":
		// snapshot-save [range=N] [name=S]
		var name string
		if d.HasArg("name") {
			d.ScanArgs(t, "name", &name)
		}
		h.saved[name] = h.saveSnapshotOf(t, h.rangeSM(rangeID))
		return "saved " + h.status(rangeID)
	case "snapshot-recover":
		// snapshot-recover [range=N] [name=S]: recover a saved snapshot into
		// the range (which may hold other data; a range the store does not
		// run yet is created first, as a replica added to this node); the
		// dump must equal the one taken at save time.
		var name string
		if d.HasArg("name") {
			d.ScanArgs(t, "name", &name)
		}
		saved, ok := h.saved[name]
		if !ok {
			t.Fatalf("%s: no snapshot named %q", d.Pos, name)
		}
		if rangeID != testRangeID && h.others[rangeID] == nil {
			h.addRange(rangeID)
		}
		rsm := h.rangeSM(rangeID)
		if err := rsm.RecoverFromSnapshot(bytes.NewReader(saved), nil); err != nil {
			t.Fatal(err)
		}
		v := h.viewOf(rangeID)
		*h.indexOf(rangeID) = v.AppliedIndex() // Dragonboat carries on after the snapshot's index
		v.Close()
		again := h.saveSnapshotOf(t, rsm)
		eq := "identical to the saved one"
		if !bytes.Equal(again, saved) {
			eq = "DIFFERENT from the saved one"
		}
		return fmt.Sprintf("recovered; a new snapshot is %s\n%s", eq, h.dumpOf(t, rangeID))
	case "new-store":
		h.close()
		h.openStore(t.TempDir(), nil)
		return h.status(testRangeID)
	}
	t.Fatalf("%s: unknown directive %q", d.Pos, d.Cmd)
	return ""
}

func (h *harness) saveSnapshot(t testing.TB) []byte {
	return h.saveSnapshotOf(t, h.rsm)
}

func (h *harness) saveSnapshotOf(t testing.TB, rsm *RangeSM) []byte {
	prepared, err := rsm.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rsm.SaveSnapshot(prepared, &buf, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func rangeRequest(t testing.TB, d *datadriven.TestData) *pb.RangeRequest {
	req := &pb.RangeRequest{
		Key:               argBytes(t, d, "k"),
		RangeEnd:          argBytes(t, d, "end"),
		Revision:          argInt(t, d, "rev", 0),
		Limit:             argInt(t, d, "limit", 0),
		KeysOnly:          d.HasArg("keys-only"),
		CountOnly:         d.HasArg("count-only"),
		MinModRevision:    argInt(t, d, "min-mod", 0),
		MaxModRevision:    argInt(t, d, "max-mod", 0),
		MinCreateRevision: argInt(t, d, "min-create", 0),
		MaxCreateRevision: argInt(t, d, "max-create", 0),
	}
	if a, ok := d.Arg("sort"); ok {
		target, order := a.TwoVals(t)
		req.SortTarget = pb.RangeRequest_SortTarget(pb.RangeRequest_SortTarget_value[strings.ToUpper(target)])
		req.SortOrder = pb.RangeRequest_SortOrder(pb.RangeRequest_SortOrder_value[strings.ToUpper(order)])
	}
	return req
}

// ---- formatting ----

func formatKV(kv *mvccpb.KeyValue) string {
	s := fmt.Sprintf("%q = %q (c=%d m=%d v=%d", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
	if kv.Lease != 0 {
		s += fmt.Sprintf(" lease=%d", kv.Lease)
	}
	return s + ")"
}

func hdrRev(h *pb.ResponseHeader) string {
	if h == nil {
		return "none"
	}
	return strconv.FormatInt(h.Revision, 10)
}

func formatResult(t testing.TB, res *tesserapb.Result, kind string) string {
	if err := ErrorFromResult(res); err != nil {
		return fmt.Sprintf("error (code %d): %v\n", res.Code, err)
	}
	var b strings.Builder
	unmarshalTo := func(m proto.Message) {
		if err := proto.Unmarshal(res.Response, m); err != nil {
			t.Fatal(err)
		}
	}
	switch kind {
	case "op":
		tr := &pb.TxnResponse{}
		unmarshalTo(tr)
		if len(tr.Responses) != 1 {
			t.Fatalf("want one response, got %v", tr)
		}
		formatOp(&b, "", tr.Responses[0])
		if hdrRev(tr.Header) != hdrRevOf(tr.Responses[0]) {
			fmt.Fprintf(&b, "top header rev=%s\n", hdrRev(tr.Header))
		}
	case "txn":
		tr := &pb.TxnResponse{}
		unmarshalTo(tr)
		formatTxn(&b, "", tr)
	case "txn-hold":
		hr := &tesserapb.TxnHoldResult{}
		unmarshalTo(hr)
		fmt.Fprintf(&b, "held; compacted=%d compares:", hr.CompactedRevision)
		for i, c := range hr.Compares {
			switch {
			case !c.Keys:
				fmt.Fprintf(&b, " %d=no-keys", i)
			default:
				fmt.Fprintf(&b, " %d=%t", i, c.Matched)
			}
		}
		b.WriteString("\n")
		for _, f := range hr.Failed {
			fmt.Fprintf(&b, "op %d failed (code %d): %s\n", f.Op, f.Code, f.Message)
		}
	case "compact":
		cr := &pb.CompactionResponse{}
		unmarshalTo(cr)
		fmt.Fprintf(&b, "compacted; header rev=%s\n", hdrRev(cr.Header))
	case "lease-grant":
		lr := &pb.LeaseGrantResponse{}
		unmarshalTo(lr)
		fmt.Fprintf(&b, "granted %d ttl=%d; header rev=%s\n", lr.ID, lr.TTL, hdrRev(lr.Header))
	case "lease-revoke":
		lr := &pb.LeaseRevokeResponse{}
		unmarshalTo(lr)
		fmt.Fprintf(&b, "revoked; header rev=%s\n", hdrRev(lr.Header))
	case "lease-record":
		rec := &tesserapb.LeaseRecord{}
		unmarshalTo(rec)
		fmt.Fprintf(&b, "lease %d ttl=%d revoking=%t tracked=%t spans=[", rec.Id, rec.TtlSeconds, rec.Revoking, rec.SpansTracked)
		for i, sp := range rec.Spans {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "[%q, %q)", sp.Start, sp.End)
		}
		b.WriteString("]\n")
	default:
		if len(res.Response) != 0 {
			t.Fatalf("unexpected response %x", res.Response)
		}
		b.WriteString("ok\n")
	}
	return b.String()
}

func hdrRevOf(op *pb.ResponseOp) string {
	switch r := op.Response.(type) {
	case *pb.ResponseOp_ResponsePut:
		return hdrRev(r.ResponsePut.Header)
	case *pb.ResponseOp_ResponseDeleteRange:
		return hdrRev(r.ResponseDeleteRange.Header)
	case *pb.ResponseOp_ResponseRange:
		return hdrRev(r.ResponseRange.Header)
	}
	return ""
}

func formatTxn(b *strings.Builder, indent string, tr *pb.TxnResponse) {
	fmt.Fprintf(b, "%stxn succeeded=%t header rev=%s\n", indent, tr.Succeeded, hdrRev(tr.Header))
	for _, op := range tr.Responses {
		formatOp(b, indent+"  ", op)
	}
}

func formatOp(b *strings.Builder, indent string, op *pb.ResponseOp) {
	switch r := op.Response.(type) {
	case *pb.ResponseOp_ResponsePut:
		fmt.Fprintf(b, "%sput rev=%s\n", indent, hdrRev(r.ResponsePut.Header))
		if r.ResponsePut.PrevKv != nil {
			fmt.Fprintf(b, "%s  prev %s\n", indent, formatKV(r.ResponsePut.PrevKv))
		}
	case *pb.ResponseOp_ResponseDeleteRange:
		dr := r.ResponseDeleteRange
		fmt.Fprintf(b, "%sdelete rev=%s deleted=%d\n", indent, hdrRev(dr.Header), dr.Deleted)
		for _, kv := range dr.PrevKvs {
			fmt.Fprintf(b, "%s  prev %s\n", indent, formatKV(kv))
		}
	case *pb.ResponseOp_ResponseRange:
		formatRange(b, indent, r.ResponseRange)
	case *pb.ResponseOp_ResponseTxn:
		formatTxn(b, indent, r.ResponseTxn)
	default:
		fmt.Fprintf(b, "%s<empty response>\n", indent)
	}
}

func formatRange(b *strings.Builder, indent string, rr *pb.RangeResponse) {
	fmt.Fprintf(b, "%srange", indent)
	if rr.Header != nil {
		fmt.Fprintf(b, " rev=%d", rr.Header.Revision)
	}
	fmt.Fprintf(b, " count=%d more=%t\n", rr.Count, rr.More)
	for _, kv := range rr.Kvs {
		fmt.Fprintf(b, "%s  %s\n", indent, formatKV(kv))
	}
}

func dumpLeasesMembers(t testing.TB, v *View) string {
	var b strings.Builder
	leases, err := v.Leases()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		keys, err := leaseKeys(v.snap.snap, l.Id, v.bounds)
		if err != nil {
			t.Fatal(err)
		}
		mark := ""
		if l.GetRevoking() {
			mark = " revoking"
		}
		fmt.Fprintf(&b, "lease %d ttl=%d%s keys=%q\n", l.Id, l.TtlSeconds, mark, keys)
	}
	if b.Len() == 0 {
		return "none\n"
	}
	return b.String()
}

// dump prints everything range testRangeID stores: state, leases, members,
// the lease index, and every stored version within its bounds.
func (h *harness) dump(t testing.TB) string {
	return h.dumpOf(t, testRangeID)
}

func (h *harness) dumpOf(t testing.TB, rangeID uint64) string {
	v := h.viewOf(rangeID)
	defer v.Close()
	var b strings.Builder
	b.WriteString(statusLine(v))
	b.WriteString(dumpLeasesMembers(t, v))
	for _, ver := range rawVersions(t, v.snap.snap) {
		if v.bounds.containsKey([]byte(ver.key)) {
			b.WriteString(ver.String() + "\n")
		}
	}
	return b.String()
}

// dumpStore prints what the store holds whoever owns it: every range's
// stored bounds, every stored version and every lease index entry.
func dumpStore(t testing.TB, db *pebble.DB) string {
	var b strings.Builder
	snap := db.NewSnapshot()
	defer closeQuietly(snap)
	ranges, err := storedRanges(snap, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		fmt.Fprintf(&b, "range %d %s\n", r.rangeID, r.bounds)
	}
	for _, ver := range rawVersions(t, snap) {
		b.WriteString(ver.String() + "\n")
	}
	err = iterPrefix(snap, []byte{prefixLeaseIndex}, func(k, _ []byte) error {
		leaseID, userKey, err := decodeLeaseIndexKey(k)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "lease-index %d %q\n", leaseID, userKey)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// rawVersion is one stored data entry.
type rawVersion struct {
	key string
	rev int64
	kv  *mvccpb.KeyValue // nil for a tombstone
}

func (r rawVersion) String() string {
	if r.kv == nil {
		return fmt.Sprintf("%q@%d <tombstone>", r.key, r.rev)
	}
	return fmt.Sprintf("%q@%d %s", r.key, r.rev, formatKV(r.kv))
}

func rawVersions(t testing.TB, r pebble.Reader) []rawVersion {
	var out []rawVersion
	err := iterPrefix(r, []byte{prefixData}, func(k, v []byte) error {
		userKey, rev, err := decodeDataKey(k)
		if err != nil {
			return err
		}
		kv, err := decodeVersion(userKey, v)
		if err != nil {
			return err
		}
		out = append(out, rawVersion{key: string(userKey), rev: rev, kv: kv})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sort.SliceIsSorted(out, func(i, j int) bool {
		if out[i].key != out[j].key {
			return out[i].key < out[j].key
		}
		return out[i].rev > out[j].rev
	}) {
		t.Fatal("stored versions are not in (key, revision descending) order")
	}
	return out
}
