package tests

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// This file holds the watch-guarantee checker: it takes what watches delivered
// and what writers were told by their responses, and reports every breach of
// etcd's watch guarantees (https://etcd.io/docs/v3.5/learning/api_guarantees/#watch-apis):
//
//   - ordered: events by revision; a revision is never split over two
//     responses (so a Txn's events arrive in one response, atomic);
//   - unique: no event (key, mod_revision) twice;
//   - reliable: no acknowledged write in the watch's key interval and
//     revision window is missing;
//   - sound: every event comes from a write (acknowledged at that revision, or
//     one whose outcome the writer does not know);
//   - prev_kv: present exactly when asked and the event is not a creation,
//     equal to the key's previous event when the watch delivered it;
//   - progress: a progress notification at R is never followed by an event
//     at or below R, never goes back, and is never below an event delivered;
//   - agreement: two watches that cover the same keys and revisions deliver
//     the same events (resumable: a watch cut and resumed from its last
//     revision + 1 is checked as one watch against uninterrupted ones).

// wcInterval is a watched key interval [lo, hi); hi "" means no upper bound.
type wcInterval struct{ lo, hi string }

// intervalOf is the interval a watch request covers, from its key and
// range_end as sent on the wire: no range_end is the single key, "\x00" every
// key from key on.
func intervalOf(key, rangeEnd string) wcInterval {
	if key == "" {
		key = "\x00" // etcd: an empty key is the smallest key
	}
	switch rangeEnd {
	case "":
		return wcInterval{lo: key, hi: key + "\x00"}
	case "\x00":
		return wcInterval{lo: key}
	default:
		return wcInterval{lo: key, hi: rangeEnd}
	}
}

func (iv wcInterval) contains(key string) bool {
	return key >= iv.lo && (iv.hi == "" || key < iv.hi)
}

func (iv wcInterval) intersect(o wcInterval) (wcInterval, bool) {
	out := wcInterval{lo: max(iv.lo, o.lo), hi: iv.hi}
	if out.hi == "" || (o.hi != "" && o.hi < out.hi) {
		out.hi = o.hi
	}
	return out, out.hi == "" || out.lo < out.hi
}

func (iv wcInterval) String() string {
	if iv.hi == "" {
		return fmt.Sprintf("[%q, ∞)", iv.lo)
	}
	return fmt.Sprintf("[%q, %q)", iv.lo, iv.hi)
}

// watchResp is one WatchResponse as the client got it: events, or a progress
// notification (no events, header revision only).
type watchResp struct {
	headerRev int64
	progress  bool
	events    []*mvccpb.Event
}

// watchLog is everything one watch delivered, in arrival order.
type watchLog struct {
	name   string
	iv     wcInterval
	prevKV bool
	// reqStart: every event with reqStart ≤ revision ≤ progress() must have
	// arrived (the requested start revision, or for a watch from "now" the
	// created response's header revision + 1).
	reqStart int64
	// minRev: no event below it may arrive (the requested start revision; 0
	// for a watch from "now", which may deliver events up to its created
	// header revision or not).
	minRev int64
	resps  []watchResp
}

// progress is the revision the watch has covered: the highest progress
// notification or event revision (events arrive in revision order, so an event
// at r says every event below r has been delivered, and a whole revision
// arrives in one response).
func (l *watchLog) progress() int64 {
	var p int64
	for _, r := range l.resps {
		if r.progress {
			p = max(p, r.headerRev)
		} else if n := len(r.events); n > 0 {
			p = max(p, r.events[n-1].Kv.ModRevision)
		}
	}
	return p
}

func (l *watchLog) eventCount() (events, progress int) {
	for _, r := range l.resps {
		if r.progress {
			progress++
		}
		events += len(r.events)
	}
	return events, progress
}

// wcState is what a writer knows of its write.
type wcState int

const (
	wcAcked   wcState = iota // answered: applied at rev (or had no effect, keys empty)
	wcUnknown                // failed with an error that leaves the outcome open
	wcRefused                // refused before applying (FailedPrecondition)
)

// wcWrite is one write as its client saw it.
type wcWrite struct {
	op     string   // "put", "delete" or "txn"
	keys   []string // put/txn: keys written (in op order); acknowledged delete: keys it deleted
	values []string // put/txn: the value written to keys[i]
	del    wcInterval
	rev    int64 // acknowledged: the response's header revision
	state  wcState
}

func (w *wcWrite) String() string {
	s := map[wcState]string{wcAcked: "acknowledged", wcUnknown: "unknown-outcome", wcRefused: "refused"}[w.state]
	if w.op == "delete" {
		return fmt.Sprintf("%s delete of %s at %d", s, w.del, w.rev)
	}
	return fmt.Sprintf("%s %s of %v at %d", s, w.op, w.keys, w.rev)
}

type wcEventID struct {
	key string
	rev int64
}

type wcExpected struct {
	typ   mvccpb.Event_EventType
	value string
	write *wcWrite
}

// wcHistory indexes the writes for the checks.
type wcHistory struct {
	expected   map[wcEventID]wcExpected // events the acknowledged writes made
	ids        []wcEventID              // expected's keys by revision
	putByValue map[string]*wcWrite      // every put/txn by the values it wrote (values are unique)
	unknownDel []*wcWrite
	problems   []string
}

func newWCHistory(writes []wcWrite) *wcHistory {
	h := &wcHistory{expected: map[wcEventID]wcExpected{}, putByValue: map[string]*wcWrite{}}
	for i := range writes {
		w := &writes[i]
		for _, v := range w.values {
			h.putByValue[v] = w
		}
		if w.op == "delete" && w.state == wcUnknown {
			h.unknownDel = append(h.unknownDel, w)
		}
		if w.state != wcAcked {
			continue
		}
		for j, k := range w.keys {
			e := wcExpected{typ: mvccpb.DELETE, write: w}
			if w.op != "delete" {
				e.typ, e.value = mvccpb.PUT, w.values[j]
			}
			id := wcEventID{k, w.rev}
			if prev, dup := h.expected[id]; dup {
				h.problems = append(h.problems, fmt.Sprintf("writes: %v and %v both changed %q at revision %d", prev.write, w, k, w.rev))
			}
			h.expected[id] = e
		}
	}
	for id := range h.expected {
		h.ids = append(h.ids, id)
	}
	sort.Slice(h.ids, func(i, j int) bool {
		if h.ids[i].rev != h.ids[j].rev {
			return h.ids[i].rev < h.ids[j].rev
		}
		return h.ids[i].key < h.ids[j].key
	})
	return h
}

// checkWatchLogs checks every log against the writes and against each other
// and returns the problems found (none: the guarantees held).
func checkWatchLogs(logs []*watchLog, writes []wcWrite) []string {
	h := newWCHistory(writes)
	problems := h.problems
	for _, l := range logs {
		problems = append(problems, h.checkLog(l)...)
	}
	for i := range logs {
		for j := i + 1; j < len(logs); j++ {
			if p := compareLogs(logs[i], logs[j]); p != "" {
				problems = append(problems, p)
			}
		}
	}
	return problems
}

func evType(ev *mvccpb.Event) string {
	if ev.Type == mvccpb.DELETE {
		return "DELETE"
	}
	return "PUT"
}

func (h *wcHistory) checkLog(l *watchLog) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("watch %s: ", l.name)+fmt.Sprintf(format, args...))
	}
	var (
		lastRev     int64 // revision of the last event delivered
		lastRevResp = -1  // the response it came in
		progress    int64 // highest progress notification
		seen        = map[wcEventID]*mvccpb.Event{}
		lastByKey   = map[string]*mvccpb.Event{}
	)
	for i, r := range l.resps {
		if r.progress {
			if r.headerRev < progress {
				bad("progress notification went back from %d to %d (response %d); clientv3 resumes a broken stream from the last progress + 1, so it would deliver events again", progress, r.headerRev, i)
			}
			if r.headerRev < lastRev {
				bad("progress notification at %d (response %d) is below an event already delivered at %d", r.headerRev, i, lastRev)
			}
			progress = max(progress, r.headerRev)
			continue
		}
		if n := len(r.events); n > 0 && r.headerRev < r.events[n-1].Kv.ModRevision {
			bad("response %d has header revision %d below its last event's revision %d", i, r.headerRev, r.events[n-1].Kv.ModRevision)
		}
		for _, ev := range r.events {
			key, rev := string(ev.Kv.Key), ev.Kv.ModRevision
			desc := fmt.Sprintf("%s %q@%d", evType(ev), key, rev)
			switch {
			case !l.iv.contains(key):
				bad("%s is outside the watched interval %s", desc, l.iv)
			case rev < l.minRev:
				bad("%s is below the start revision %d", desc, l.minRev)
			case rev <= progress:
				bad("%s arrived after a progress notification at %d", desc, progress)
			case rev < lastRev:
				bad("%s out of order: it came after an event at revision %d", desc, lastRev)
			case rev == lastRev && i != lastRevResp:
				bad("revision %d split across responses %d and %d (%s)", rev, lastRevResp, i, desc)
			}
			id := wcEventID{key, rev}
			if _, dup := seen[id]; dup {
				bad("duplicate %s (response %d)", desc, i)
				continue
			}
			seen[id] = ev
			if rev > lastRev {
				lastRev, lastRevResp = rev, i
			}
			h.checkSound(ev, desc, bad)
			checkKVChain(ev, lastByKey[key], desc, l.prevKV, bad)
			lastByKey[key] = ev
		}
	}
	// Reliable: every acknowledged change in the interval and window arrived,
	// as it was written.
	covered := max(progress, lastRev)
	missing := 0
	for _, id := range h.ids {
		if id.rev < l.reqStart || id.rev > covered || !l.iv.contains(id.key) {
			continue
		}
		want := h.expected[id]
		got, ok := seen[id]
		if !ok {
			if missing < 10 {
				bad("missing %s %q@%d (%v); the watch covers [%d, %d]", map[mvccpb.Event_EventType]string{mvccpb.PUT: "PUT", mvccpb.DELETE: "DELETE"}[want.typ], id.key, id.rev, want.write, l.reqStart, covered)
			}
			missing++
			continue
		}
		if got.Type != want.typ || (want.typ == mvccpb.PUT && string(got.Kv.Value) != want.value) {
			bad("%s %q@%d value %q, but the acknowledged write there was %v with value %q", evType(got), id.key, id.rev, got.Kv.Value, want.write, want.value)
		}
	}
	if missing > 10 {
		bad("%d acknowledged events missing in all", missing)
	}
	return problems
}

// checkSound: the event must come from some write.
func (h *wcHistory) checkSound(ev *mvccpb.Event, desc string, bad func(string, ...any)) {
	key, rev := string(ev.Kv.Key), ev.Kv.ModRevision
	if want, ok := h.expected[wcEventID{key, rev}]; ok && want.typ == ev.Type {
		return // value checked by the completeness pass
	}
	if ev.Type == mvccpb.PUT {
		w := h.putByValue[string(ev.Kv.Value)]
		switch {
		case w == nil:
			bad("%s value %q matches no write", desc, ev.Kv.Value)
		case w.state == wcRefused:
			bad("%s comes from %v, which was refused", desc, w)
		case w.state == wcAcked:
			bad("%s value %q was written by %v, at another revision", desc, ev.Kv.Value, w)
		default:
			for j, k := range w.keys {
				if k == key && w.values[j] == string(ev.Kv.Value) {
					return
				}
			}
			bad("%s value %q was written by %v to another key", desc, ev.Kv.Value, w)
		}
		return
	}
	for _, w := range h.unknownDel {
		if w.del.contains(key) {
			return
		}
	}
	bad("%s matches no acknowledged delete at that revision and no unknown-outcome delete of the key", desc)
}

// checkKVChain checks an event against the key's previous event in the same
// watch (nil: none delivered) and its prev_kv.
func checkKVChain(ev, prev *mvccpb.Event, desc string, wantPrevKV bool, bad func(string, ...any)) {
	kv, rev := ev.Kv, ev.Kv.ModRevision
	isCreate := ev.Type == mvccpb.PUT && kv.CreateRevision == rev
	if ev.Type == mvccpb.PUT {
		switch {
		case kv.Version < 1 || kv.CreateRevision < 1 || kv.CreateRevision > rev:
			bad("%s has version %d, create_revision %d", desc, kv.Version, kv.CreateRevision)
		case prev != nil && prev.Type == mvccpb.PUT && (kv.CreateRevision != prev.Kv.CreateRevision || kv.Version != prev.Kv.Version+1):
			bad("%s has create_revision %d version %d after PUT@%d with create_revision %d version %d",
				desc, kv.CreateRevision, kv.Version, prev.Kv.ModRevision, prev.Kv.CreateRevision, prev.Kv.Version)
		case prev != nil && prev.Type == mvccpb.DELETE && !isCreate:
			bad("%s follows DELETE@%d but is not a creation (create_revision %d, version %d)", desc, prev.Kv.ModRevision, kv.CreateRevision, kv.Version)
		case isCreate && kv.Version != 1:
			bad("%s is a creation with version %d", desc, kv.Version)
		}
	}
	if prev != nil && prev.Type == mvccpb.DELETE && ev.Type == mvccpb.DELETE {
		bad("%s follows DELETE@%d of the same key with no PUT between", desc, prev.Kv.ModRevision)
	}
	pkv := ev.PrevKv
	switch {
	case !wantPrevKV:
		if pkv != nil {
			bad("%s carries prev_kv although the watch did not ask for it", desc)
		}
	case isCreate:
		if pkv != nil {
			bad("%s creates the key but carries prev_kv (mod_revision %d)", desc, pkv.ModRevision)
		}
	case pkv == nil:
		bad("%s has no prev_kv", desc)
	case string(pkv.Key) != string(kv.Key) || pkv.ModRevision >= rev:
		bad("%s has prev_kv %q@%d", desc, pkv.Key, pkv.ModRevision)
	case prev != nil && prev.Type == mvccpb.PUT &&
		(pkv.ModRevision != prev.Kv.ModRevision || string(pkv.Value) != string(prev.Kv.Value) ||
			pkv.Version != prev.Kv.Version || pkv.CreateRevision != prev.Kv.CreateRevision):
		bad("%s has prev_kv value %q mod_revision %d version %d, but the watch's previous event of the key was PUT@%d value %q version %d",
			desc, pkv.Value, pkv.ModRevision, pkv.Version, prev.Kv.ModRevision, prev.Kv.Value, prev.Kv.Version)
	}
}

// compareLogs: over the keys and revisions both watches must have delivered
// completely, they must have delivered the same events. Events of one
// revision are compared as a set (their order inside a revision is not
// checked).
func compareLogs(a, b *watchLog) string {
	iv, ok := a.iv.intersect(b.iv)
	if !ok {
		return ""
	}
	lo, hi := max(a.reqStart, b.reqStart), min(a.progress(), b.progress())
	if lo > hi {
		return ""
	}
	withPrev := a.prevKV && b.prevKV
	sa, sb := eventSigs(a, iv, lo, hi, withPrev), eventSigs(b, iv, lo, hi, withPrev)
	for i := 0; i < len(sa) || i < len(sb); i++ {
		ea, eb := "(nothing)", "(nothing)"
		if i < len(sa) {
			ea = sa[i]
		}
		if i < len(sb) {
			eb = sb[i]
		}
		if ea != eb {
			return fmt.Sprintf("watches %s and %s disagree over %s in revisions [%d, %d]: event %d is %s in %s but %s in %s",
				a.name, b.name, iv, lo, hi, i, ea, a.name, eb, b.name)
		}
	}
	return ""
}

func eventSigs(l *watchLog, iv wcInterval, lo, hi int64, withPrev bool) []string {
	type sig struct {
		rev int64
		key string
		s   string
	}
	var out []sig
	for _, r := range l.resps {
		for _, ev := range r.events {
			rev, key := ev.Kv.ModRevision, string(ev.Kv.Key)
			if rev < lo || rev > hi || !iv.contains(key) {
				continue
			}
			s := fmt.Sprintf("%s %q@%d=%q", evType(ev), key, rev, ev.Kv.Value)
			if withPrev && ev.PrevKv != nil {
				s += fmt.Sprintf(" prev@%d", ev.PrevKv.ModRevision)
			}
			out = append(out, sig{rev, key, s})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].rev != out[j].rev {
			return out[i].rev < out[j].rev
		}
		return out[i].key < out[j].key
	})
	sigs := make([]string, len(out))
	for i, s := range out {
		sigs[i] = s.s
	}
	return sigs
}

// reportProblems fails the test with the first problems found.
func reportProblems(t *testing.T, what string, problems []string) {
	t.Helper()
	if len(problems) == 0 {
		return
	}
	const show = 40
	for i, p := range problems {
		if i == show {
			t.Errorf("... and %d more", len(problems)-show)
			break
		}
		t.Error(p)
	}
	t.Fatalf("%s: %d watch guarantee violations", what, len(problems))
}

// TestWatchCheckerCatchesViolations feeds the checker hand-made histories,
// one breach each, and requires it to name the breach (and a correct history
// to pass), so a passing end-to-end run means the guarantees held rather than
// that the checker saw nothing.
func TestWatchCheckerCatchesViolations(t *testing.T) {
	kv := func(key, value string, create, mod, version int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: create, ModRevision: mod, Version: version}
	}
	put := func(k *mvccpb.KeyValue, prev *mvccpb.KeyValue) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.PUT, Kv: k, PrevKv: prev}
	}
	del := func(key string, rev int64, prev *mvccpb.KeyValue) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}, PrevKv: prev}
	}
	writes := []wcWrite{
		{op: "put", keys: []string{"k/a"}, values: []string{"v1"}, rev: 10},
		{op: "put", keys: []string{"k/b"}, values: []string{"v2"}, rev: 11},
		{op: "txn", keys: []string{"k/c", "k/d"}, values: []string{"v3", "v4"}, rev: 12},
		{op: "put", keys: []string{"k/a"}, values: []string{"v5"}, rev: 13},
		{op: "delete", keys: []string{"k/a"}, del: intervalOf("k/a", ""), rev: 14},
		{op: "put", keys: []string{"k/b"}, values: []string{"v6"}, state: wcUnknown},
		{op: "put", keys: []string{"k/x"}, values: []string{"v7"}, state: wcRefused},
	}
	a10 := kv("k/a", "v1", 10, 10, 1)
	b11 := kv("k/b", "v2", 11, 11, 1)
	a13 := kv("k/a", "v5", 10, 13, 2)
	good := func() []watchResp {
		return []watchResp{
			{headerRev: 10, events: []*mvccpb.Event{put(a10, nil)}},
			{headerRev: 11, events: []*mvccpb.Event{put(b11, nil)}},
			{headerRev: 11, progress: true},
			{headerRev: 12, events: []*mvccpb.Event{put(kv("k/c", "v3", 12, 12, 1), nil), put(kv("k/d", "v4", 12, 12, 1), nil)}},
			{headerRev: 13, events: []*mvccpb.Event{put(a13, a10)}},
			{headerRev: 14, events: []*mvccpb.Event{del("k/a", 14, a13)}},
			{headerRev: 15, events: []*mvccpb.Event{put(kv("k/b", "v6", 11, 15, 2), b11)}}, // the unknown write landed
			{headerRev: 16, progress: true},
		}
	}
	logOf := func(name string, resps []watchResp) *watchLog {
		return &watchLog{name: name, iv: intervalOf("k/", "k0"), prevKV: true, reqStart: 10, minRev: 10, resps: resps}
	}
	if p := checkWatchLogs([]*watchLog{logOf("good", good()), logOf("good2", good())}, writes); len(p) > 0 {
		t.Fatalf("a correct history is reported: %q", p)
	}
	cases := []struct {
		name, want string
		edit       func(r []watchResp) []watchResp
	}{
		{"missing event", "missing PUT \"k/b\"@11", func(r []watchResp) []watchResp { return append(r[:1], r[2:]...) }},
		{"duplicate", "duplicate PUT \"k/a\"@13", func(r []watchResp) []watchResp {
			return append(r[:5], append([]watchResp{r[4]}, r[5:]...)...)
		}},
		{"out of order", "out of order", func(r []watchResp) []watchResp { r[0], r[1] = r[1], r[0]; return r }},
		{"txn split", "split across responses", func(r []watchResp) []watchResp {
			txn := r[3]
			first, second := txn, txn
			first.events, second.events = txn.events[:1], txn.events[1:]
			return append(r[:3], append([]watchResp{first, second}, r[4:]...)...)
		}},
		{"progress ahead", "arrived after a progress notification at 12", func(r []watchResp) []watchResp {
			r[2].headerRev = 12
			return r
		}},
		{"progress back", "went back from 16 to 11", func(r []watchResp) []watchResp {
			return append(r, watchResp{headerRev: 11, progress: true})
		}},
		{"wrong prev_kv", "prev_kv value \"v2\"", func(r []watchResp) []watchResp {
			r[5].events = []*mvccpb.Event{del("k/a", 14, kv("k/a", "v2", 10, 13, 2))}
			return r
		}},
		{"prev_kv on a creation", "creates the key but carries prev_kv", func(r []watchResp) []watchResp {
			r[1].events = []*mvccpb.Event{put(b11, a10)}
			return r
		}},
		{"wrong value", "the acknowledged write there was", func(r []watchResp) []watchResp {
			r[0].events = []*mvccpb.Event{put(kv("k/a", "v2", 10, 10, 1), nil)}
			return r
		}},
		{"refused write visible", "which was refused", func(r []watchResp) []watchResp {
			return append(r[:7], watchResp{headerRev: 16, events: []*mvccpb.Event{put(kv("k/x", "v7", 16, 16, 1), nil)}})
		}},
		{"invented delete", "matches no acknowledged delete", func(r []watchResp) []watchResp {
			return append(r[:7], watchResp{headerRev: 16, events: []*mvccpb.Event{del("k/b", 16, kv("k/b", "v6", 11, 15, 2))}})
		}},
		{"outside interval", "outside the watched interval", func(r []watchResp) []watchResp {
			r[0].events = []*mvccpb.Event{put(kv("l/a", "v1", 10, 10, 1), nil)}
			return r
		}},
		{"version chain", "create_revision 10 version 3", func(r []watchResp) []watchResp {
			r[4].events = []*mvccpb.Event{put(kv("k/a", "v5", 10, 13, 3), a10)}
			return r
		}},
	}
	for _, tc := range cases {
		p := checkWatchLogs([]*watchLog{logOf("bad", tc.edit(good())), logOf("good", good())}, writes)
		found := false
		for _, s := range p {
			found = found || strings.Contains(s, tc.want)
		}
		if !found {
			t.Errorf("%s: want a problem containing %q, got %q", tc.name, tc.want, p)
		}
	}
	// Resumed watches are checked as one: a gap at the cut is found.
	seg1 := logOf("seg1", good()[:2])
	seg2 := logOf("seg2", good()[4:])
	joined := &watchLog{name: "seg1+seg2", iv: seg1.iv, prevKV: true, reqStart: 10, minRev: 10, resps: append(seg1.resps, seg2.resps...)}
	p := checkWatchLogs([]*watchLog{joined, logOf("whole", good())}, writes)
	if len(p) == 0 || !strings.Contains(strings.Join(p, "\n"), "missing PUT \"k/c\"@12") || !strings.Contains(strings.Join(p, "\n"), "disagree") {
		t.Errorf("a resumed watch with a gap: got %q", p)
	}
}
