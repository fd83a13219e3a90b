package tests

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// watchSpec describes one clientv3 watch a test records.
type watchSpec struct {
	name   string
	key    string
	end    string // range end as sent: "" the single key, "\x00" every key from key on
	rev    int64  // start revision; 0 = from now
	prevKV bool
}

// watchRecorder runs one clientv3 watch (with created and progress
// notifications) and records everything it delivers.
type watchRecorder struct {
	spec    watchSpec
	cli     *clientv3.Client
	cancel  context.CancelFunc
	created chan struct{}
	done    chan struct{}
	covered atomic.Int64 // log.progress(), for waiting

	mu         sync.Mutex
	log        watchLog
	createdRev int64 // the created response's header revision
	err        error // how the watch ended, when not by the test's cancel
}

func startRecorder(t *testing.T, cli *clientv3.Client, spec watchSpec) *watchRecorder {
	t.Helper()
	opts := []clientv3.OpOption{clientv3.WithCreatedNotify(), clientv3.WithProgressNotify()}
	switch spec.end {
	case "":
	case "\x00":
		opts = append(opts, clientv3.WithFromKey())
	default:
		opts = append(opts, clientv3.WithRange(spec.end))
	}
	if spec.rev > 0 {
		opts = append(opts, clientv3.WithRev(spec.rev))
	}
	if spec.prevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &watchRecorder{
		spec: spec, cli: cli, cancel: cancel,
		created: make(chan struct{}), done: make(chan struct{}),
		log: watchLog{name: spec.name, iv: intervalOf(spec.key, spec.end), prevKV: spec.prevKV, reqStart: spec.rev, minRev: spec.rev},
	}
	go r.run(cli.Watch(ctx, spec.key, opts...))
	t.Cleanup(r.stop)
	return r
}

func (r *watchRecorder) run(wch clientv3.WatchChan) {
	defer close(r.done)
	var covered int64
	for wr := range wch {
		r.mu.Lock()
		switch {
		case wr.Created:
			if r.createdRev == 0 {
				r.createdRev = wr.Header.Revision
				if r.spec.rev == 0 {
					r.log.reqStart = wr.Header.Revision + 1
				}
				close(r.created)
			}
		case wr.Err() != nil:
			r.err = wr.Err()
		case wr.IsProgressNotify():
			r.log.resps = append(r.log.resps, watchResp{headerRev: wr.Header.Revision, progress: true})
			covered = max(covered, wr.Header.Revision)
		case len(wr.Events) > 0:
			r.log.resps = append(r.log.resps, watchResp{headerRev: wr.Header.Revision, events: wr.Events})
			covered = max(covered, wr.Events[len(wr.Events)-1].Kv.ModRevision)
		}
		r.covered.Store(covered)
		r.mu.Unlock()
	}
}

// waitCreated waits for the created response; the watch must not have failed.
func (r *watchRecorder) waitCreated(t *testing.T) {
	t.Helper()
	select {
	case <-r.created:
	case <-r.done:
		t.Fatalf("watch %s ended before it was created: %v", r.spec.name, r.err)
	case <-time.After(10 * time.Second):
		t.Fatalf("watch %s: no created response within 10s", r.spec.name)
	}
}

// stop cancels the watch and waits for its channel to close.
func (r *watchRecorder) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
	}
}

func (r *watchRecorder) snapshot() (watchLog, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.log
	l.resps = append([]watchResp(nil), r.log.resps...)
	return l, r.err
}

// waitCovered waits until every recorder has covered rev (an event or a
// progress notification at or above it), asking each one's client for
// progress every 250ms. It returns the ones that did not get there.
func waitCovered(rev int64, timeout time.Duration, recs ...*watchRecorder) []string {
	deadline := time.Now().Add(timeout)
	for {
		var behind []*watchRecorder
		for _, r := range recs {
			if r.covered.Load() < rev {
				behind = append(behind, r)
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var out []string
			for _, r := range behind {
				_, err := r.snapshot()
				out = append(out, fmt.Sprintf("watch %s covers only up to %d, want %d (ended: %v)", r.spec.name, r.covered.Load(), rev, err))
			}
			return out
		}
		asked := map[*clientv3.Client]bool{}
		for _, r := range behind {
			if !asked[r.cli] {
				asked[r.cli] = true
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = r.cli.RequestProgress(ctx)
				cancel()
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// trySplit is splitAt for use while other goroutines run: it reports instead
// of stopping the test. An attempt that failed as unavailable may have split
// all the same: a later attempt finding the key a boundary already is then
// the split done.
func trySplit(c *testcluster.Cluster, via *testcluster.Node, key string) error {
	var err error
	for attempt := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = via.Server.SplitRange(ctx, key)
		cancel()
		if attempt > 0 && status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "already a range boundary") {
			return nil
		}
		if status.Code(err) != codes.Unavailable {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// writeState classifies a write's error.
func writeState(err error) wcState {
	switch {
	case err == nil:
		return wcAcked
	case status.Code(err) == codes.FailedPrecondition:
		return wcRefused
	default:
		return wcUnknown
	}
}

func countWrites(writes []wcWrite) string {
	n := map[string]int{}
	for _, w := range writes {
		switch w.state {
		case wcAcked:
			if len(w.keys) == 0 {
				n[w.op+" (no effect)"]++
			} else {
				n[w.op]++
			}
		case wcUnknown:
			n["unknown outcome"]++
		case wcRefused:
			n["refused"]++
		}
	}
	var parts []string
	for k, v := range n {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func maxAckedRev(writes []wcWrite) int64 {
	var rev int64
	for _, w := range writes {
		if w.state == wcAcked && len(w.keys) > 0 {
			rev = max(rev, w.rev)
		}
	}
	return rev
}

// TestWatchGuarantees: random concurrent Puts, Deletes (single keys and
// ranges) and compare-and-swap Txns of three puts, through all three nodes of
// a cluster cut into 9 ranges, while ranges split and range and meta leaders
// move. Watches on every node — prefix, range, from-key and single-key
// watches, with and without prev_kv, from now and from an old revision, two of
// them on one stream, one cut mid-run and resumed from its last revision + 1 on
// another node — record everything, and the checker (watchcheck_test.go)
// checks etcd's guarantees against the writes' own responses: ordered, unique,
// reliable, atomic, prev_kv, progress notifications never ahead of events,
// resumable, and the same events for any two watches over the same keys.
func TestWatchGuarantees(t *testing.T) {
	runWatchGuarantees(t, testcluster.Start(t, 3, watchProgressOften), []int{0, 1, 2}, nil)
}

// TestWatchGuaranteesWithoutReplicas: the same on four nodes with three
// replicas per range, the watches and most writers on the fourth node, which
// holds no replica at first: its watch hub follows the ranges held elsewhere
// through range feeds and catches up through other nodes' history, while
// replicas move between the nodes, onto the fourth among them.
func TestWatchGuaranteesWithoutReplicas(t *testing.T) {
	runWatchGuarantees(t, testcluster.Start(t, 4, watchProgressOften), []int{3, 1, 3}, nil)
}

func watchProgressOften(cfg *serverConfig) { cfg.WatchProgressNotifyInterval = 300 * time.Millisecond }

// runWatchGuarantees runs TestWatchGuarantees' load on a cluster, with what
// the test puts on its first, second and third node on the nodes at the
// given indexes (modulo the nodes there are when it starts each). On more
// than three nodes, a replica moves in each round. With grow, each round
// starts with grow(round) instead, which may add nodes.
func runWatchGuarantees(t *testing.T, c *testcluster.Cluster, on []int, grow func(round int)) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	nodeAt := func(i int) *testcluster.Node { return c.Nodes[i%len(c.Nodes)] }
	// Groups wc/0 … wc/9 of 12 keys each; every Txn and range delete stays in
	// one half of a group (wc/G/00-05 or wc/G/06-11), and every split during
	// the run is at a group or half boundary, so no write spans two ranges.
	for i, key := range []string{"wc/1", "wc/2", "wc/3", "wc/4", "wc/5", "wc/6", "wc/7", "wc/8"} {
		splitAt(t, c, nodeAt(i%3), key)
	}
	waitRanges(t, c, 9)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	list, err := c.Client(c.Nodes[0].ClientURL).Get(ctx, "wc/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	rev0 := list.Header.Revision
	prefixEnd := clientv3.GetPrefixRangeEnd("wc/")
	node := func(i int) *clientv3.Client { return c.Client(nodeAt(on[i]).ClientURL) }

	// Watches from now, and the first segment of the resumed one.
	sharedStream := node(2)
	recA := startRecorder(t, node(0), watchSpec{name: "A(prefix,n1,prev_kv)", key: "wc/", end: prefixEnd, prevKV: true})
	recC := startRecorder(t, sharedStream, watchSpec{name: "C(prefix wc/3/,n3,prev_kv)", key: "wc/3/", end: clientv3.GetPrefixRangeEnd("wc/3/"), prevKV: true})
	recD := startRecorder(t, sharedStream, watchSpec{name: "D(key wc/5/00,n3,same stream as C)", key: "wc/5/00"})
	recF := startRecorder(t, node(1), watchSpec{name: "F(range wc/2-wc/5,n2)", key: "wc/2", end: "wc/5"})
	recG := startRecorder(t, node(2), watchSpec{name: "G(from key wc/7,n3)", key: "wc/7", end: "\x00"})
	recS1 := startRecorder(t, node(1), watchSpec{name: "S1(prefix,n2,from rev0+1)", key: "wc/", end: prefixEnd, rev: rev0 + 1, prevKV: true})
	for _, r := range []*watchRecorder{recA, recC, recD, recF, recG, recS1} {
		r.waitCreated(t)
	}

	const (
		writers         = 6
		maxOpsPerWriter = 400
	)
	var (
		mu     sync.Mutex
		writes []wcWrite
		wg     sync.WaitGroup
		stop   = make(chan struct{})
	)
	for w := range writers {
		cli := node(w % 3)
		rng := rand.New(rand.NewSource(seed + int64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxOpsPerWriter; i++ {
				select {
				case <-stop:
					return
				default:
				}
				group, half := rng.Intn(10), rng.Intn(2)
				keyOf := func(j int) string { return fmt.Sprintf("wc/%d/%02d", group, half*6+j) }
				value := fmt.Sprintf("w%d-%d", w, i)
				opCtx, opCancel := context.WithTimeout(ctx, 3*time.Second)
				var rec wcWrite
				switch r := rng.Intn(10); {
				case r < 5:
					key := keyOf(rng.Intn(6))
					if rng.Intn(5) == 0 { // the keys of the single-key watches
						key = []string{"wc/5/00", "wc/3/07"}[rng.Intn(2)]
					}
					rec = wcWrite{op: "put", keys: []string{key}, values: []string{value}}
					resp, err := cli.Put(opCtx, key, value)
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
					}
				case r < 8:
					var resp *clientv3.DeleteResponse
					var err error
					if r < 7 {
						key := keyOf(rng.Intn(6))
						rec = wcWrite{op: "delete", del: intervalOf(key, "")}
						resp, err = cli.Delete(opCtx, key, clientv3.WithPrevKV())
					} else {
						rec = wcWrite{op: "delete", del: intervalOf(keyOf(0), keyOf(6))}
						resp, err = cli.Delete(opCtx, keyOf(0), clientv3.WithRange(keyOf(6)), clientv3.WithPrevKV())
					}
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
						for _, kv := range resp.PrevKvs {
							rec.keys = append(rec.keys, string(kv.Key))
						}
						if int64(len(resp.PrevKvs)) != resp.Deleted {
							t.Errorf("writer %d: delete of %s answered deleted=%d with %d prev_kvs", w, rec.del, resp.Deleted, len(resp.PrevKvs))
						}
					}
				default:
					js := rng.Perm(6)[:3]
					var ops []clientv3.Op
					rec = wcWrite{op: "txn"}
					for _, j := range js {
						k, v := keyOf(j), fmt.Sprintf("%s-%d", value, j)
						rec.keys, rec.values = append(rec.keys, k), append(rec.values, v)
						ops = append(ops, clientv3.OpPut(k, v))
					}
					cmp := clientv3.Compare(clientv3.ModRevision(rec.keys[0]), "<", int64(math.MaxInt64))
					if rng.Intn(3) == 0 {
						cmp = clientv3.Compare(clientv3.Value(rec.keys[0]), "=", fmt.Sprintf("w%d-%d", rng.Intn(writers), rng.Intn(i+1)))
					}
					resp, err := cli.Txn(opCtx).If(cmp).Then(ops...).Commit()
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
						if !resp.Succeeded {
							rec.keys = nil // no effect; its values must never show
						}
					}
				}
				opCancel()
				mu.Lock()
				writes = append(writes, rec)
				mu.Unlock()
			}
		}()
	}

	// Disturb: old-revision watches that must replay history while writes go
	// on, splits at group and half boundaries, leader moves, and the resumed
	// watch cut in the middle.
	var recB, recE, recS2 *watchRecorder
	var s1Log watchLog
	for round := range 4 {
		time.Sleep(400 * time.Millisecond)
		if grow != nil {
			grow(round)
		} else if len(c.Nodes) > 3 {
			// Replicas move between nodes too.
			moveOneReplica(t, c, round)
		}
		switch round {
		case 0:
			recB = startRecorder(t, node(1), watchSpec{name: "B(prefix,n2,from rev0+1 started late)", key: "wc/", end: prefixEnd, rev: rev0 + 1})
			recE = startRecorder(t, node(0), watchSpec{name: "E(key wc/3/07,n1,prev_kv,from rev0+1 started late)", key: "wc/3/07", rev: rev0 + 1, prevKV: true})
			if err := trySplit(c, nodeAt(1), "wc/3/06"); err != nil {
				t.Errorf("split at wc/3/06: %v", err)
			}
		case 1:
			_ = nodeAt(0).Server.Testing().TransferLeadership(2)
			recS1.stop()
			var s1Err error
			if s1Log, s1Err = recS1.snapshot(); s1Err != nil {
				t.Errorf("watch %s ended with %v", recS1.spec.name, s1Err)
			}
			resumeAt := s1Log.progress() + 1
			if resumeAt == 1 {
				resumeAt = rev0 + 1
			}
			recS2 = startRecorder(t, node(2), watchSpec{name: "S2(prefix,n3,resumed)", key: "wc/", end: prefixEnd, rev: resumeAt, prevKV: true})
			t.Logf("S1 cut after %d responses, covering up to %d; S2 resumes at %d", len(s1Log.resps), resumeAt-1, resumeAt)
		case 2:
			if err := trySplit(c, nodeAt(2), "wc/6/06"); err != nil {
				t.Errorf("split at wc/6/06: %v", err)
			}
			_ = nodeAt(1).Server.Testing().TransferMetaLeadership(3)
		case 3:
			_ = nodeAt(2).Server.Testing().TransferLeadership(3)
			if err := trySplit(c, nodeAt(0), "wc/9"); err != nil {
				t.Errorf("split at wc/9: %v", err)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	live := []*watchRecorder{recA, recB, recC, recD, recE, recF, recG, recS2}
	for _, r := range live {
		r.waitCreated(t)
	}
	finalRev := maxAckedRev(writes)
	t.Logf("writes: %s; last acknowledged revision %d (watch history from %d)", countWrites(writes), finalRev, rev0)
	waitStart := time.Now()
	for _, s := range waitCovered(finalRev, 20*time.Second, live...) {
		t.Error(s)
	}
	t.Logf("watches caught up with the last write %v after the writers stopped", time.Since(waitStart).Round(time.Millisecond))
	var logs []*watchLog
	for _, r := range live {
		r.stop()
		l, err := r.snapshot()
		if err != nil {
			t.Errorf("watch %s ended with %v", r.spec.name, err)
		}
		if r == recS2 {
			l.name = "S1+S2(resumed)"
			l.reqStart, l.minRev = s1Log.reqStart, s1Log.minRev
			l.resps = append(append([]watchResp(nil), s1Log.resps...), l.resps...)
		}
		events, progress := l.eventCount()
		t.Logf("watch %s: %d responses, %d events, %d progress notifications, covers [%d, %d]", l.name, len(l.resps), events, progress, l.reqStart, l.progress())
		logs = append(logs, &l)
	}
	if n, _ := logs[0].eventCount(); n == 0 {
		t.Fatalf("watch %s saw no events at all", logs[0].name)
	}
	reportProblems(t, "TestWatchGuarantees", checkWatchLogs(logs, writes))
}

// TestWatchListThenWatch: Kubernetes' List-then-Watch over four ranges on
// three nodes. A List of a prefix at header revision R while writers put and
// delete across the ranges, then a watch from R+1 on another node; once the
// watch has covered the last acknowledged write, replaying its events over the
// List gives exactly the state a read at the watch's revision returns
// (values, create and mod revisions, versions).
func TestWatchListThenWatch(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	c := testcluster.Start(t, 3, func(cfg *serverConfig) { cfg.WatchProgressNotifyInterval = 300 * time.Millisecond })
	for i, key := range []string{"lw/1", "lw/2", "lw/3"} {
		splitAt(t, c, c.Nodes[i%3], key)
	}
	waitRanges(t, c, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keyOf := func(rng *rand.Rand) string { return fmt.Sprintf("lw/%d/%02d", rng.Intn(4), rng.Intn(15)) }
	loader := c.Client(c.Nodes[0].ClientURL)
	for g := range 4 {
		for i := range 10 {
			if _, err := loader.Put(ctx, fmt.Sprintf("lw/%d/%02d", g, i), "initial"); err != nil {
				t.Fatal(err)
			}
		}
	}

	var (
		mu     sync.Mutex
		writes []wcWrite
		wg     sync.WaitGroup
		stop   = make(chan struct{})
	)
	for w := range 4 {
		cli := c.Client(c.Nodes[w%3].ClientURL)
		rng := rand.New(rand.NewSource(seed + int64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key, value := keyOf(rng), fmt.Sprintf("w%d-%d", w, i)
				opCtx, opCancel := context.WithTimeout(ctx, 3*time.Second)
				var rec wcWrite
				if rng.Intn(4) == 0 {
					rec = wcWrite{op: "delete", del: intervalOf(key, "")}
					resp, err := cli.Delete(opCtx, key, clientv3.WithPrevKV())
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
						for _, kv := range resp.PrevKvs {
							rec.keys = append(rec.keys, string(kv.Key))
						}
					}
				} else {
					rec = wcWrite{op: "put", keys: []string{key}, values: []string{value}}
					resp, err := cli.Put(opCtx, key, value)
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
					}
				}
				opCancel()
				mu.Lock()
				writes = append(writes, rec)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	listed, err := c.Client(c.Nodes[1].ClientURL).Get(ctx, "lw/", clientv3.WithPrefix())
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	listRev := listed.Header.Revision
	rec := startRecorder(t, c.Client(c.Nodes[2].ClientURL), watchSpec{name: "list-then-watch(n3)", key: "lw/", end: clientv3.GetPrefixRangeEnd("lw/"), rev: listRev + 1, prevKV: true})
	time.Sleep(1200 * time.Millisecond)
	close(stop)
	wg.Wait()
	finalRev := maxAckedRev(writes)
	t.Logf("listed %d keys at %d; writes: %s; last acknowledged revision %d", len(listed.Kvs), listRev, countWrites(writes), finalRev)
	for _, s := range waitCovered(finalRev, 20*time.Second, rec) {
		t.Fatal(s)
	}
	rec.stop()
	l, werr := rec.snapshot()
	if werr != nil {
		t.Fatalf("watch ended with %v", werr)
	}
	reportProblems(t, "list-then-watch", checkWatchLogs([]*watchLog{&l}, writes))

	watchRev := l.progress()
	state := map[string]*mvccpb.KeyValue{}
	for _, kv := range listed.Kvs {
		state[string(kv.Key)] = kv
	}
	events := 0
	for _, r := range l.resps {
		for _, ev := range r.events {
			key := string(ev.Kv.Key)
			if ev.Kv.ModRevision <= listRev {
				t.Fatalf("event %s %q@%d is not after the list's revision %d", evType(ev), key, ev.Kv.ModRevision, listRev)
			}
			events++
			if ev.Type == mvccpb.DELETE {
				if state[key] == nil {
					t.Errorf("DELETE %q@%d of a key absent from the list plus the events before it", key, ev.Kv.ModRevision)
				}
				delete(state, key)
			} else {
				state[key] = ev.Kv
			}
		}
	}
	at, err := c.Client(c.Nodes[0].ClientURL).Get(ctx, "lw/", clientv3.WithPrefix(), clientv3.WithRev(watchRev))
	if err != nil {
		t.Fatalf("read at the watch's revision %d: %v", watchRev, err)
	}
	for _, kv := range at.Kvs {
		key := string(kv.Key)
		got := state[key]
		switch {
		case got == nil:
			t.Errorf("%q=%q (mod %d) at revision %d is missing from list+events", key, kv.Value, kv.ModRevision, watchRev)
		case string(got.Value) != string(kv.Value) || got.ModRevision != kv.ModRevision || got.CreateRevision != kv.CreateRevision || got.Version != kv.Version:
			t.Errorf("%q: list+events give value %q mod %d create %d version %d, the read at %d gives %q mod %d create %d version %d",
				key, got.Value, got.ModRevision, got.CreateRevision, got.Version, watchRev, kv.Value, kv.ModRevision, kv.CreateRevision, kv.Version)
		}
		delete(state, key)
	}
	for key, kv := range state {
		t.Errorf("%q=%q (mod %d) from list+events is absent at revision %d", key, kv.Value, kv.ModRevision, watchRev)
	}
	t.Logf("replayed %d events over the list; %d keys at revision %d", events, len(at.Kvs), watchRev)
}

// TestWatchCompacted: after Compact(C), a watch from below C gets one response
// with CompactRevision C, canceled, whose Err() is rpctypes.ErrCompacted, and
// its channel closes; watches from C and from C+1 deliver the history from
// there. On a raw stream the watch is first created (its ID) and then canceled
// with compact_revision C. The watched prefix spans two ranges.
func TestWatchCompacted(t *testing.T) {
	c := testcluster.Start(t, 1)
	splitAt(t, c, c.Nodes[0], "cp/m")
	waitRanges(t, c, 2)
	ctx := ctxT(t)
	cli := c.Client()
	var revs []int64
	for i := range 6 {
		key := "cp/a"
		if i%2 == 1 {
			key = "cp/z"
		}
		resp, err := cli.Put(ctx, key, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	compactRev := revs[3]
	if _, err := cli.Compact(ctx, compactRev); err != nil {
		t.Fatal(err)
	}

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli.Watch(wctx, "cp/", clientv3.WithPrefix(), clientv3.WithRev(revs[1]))
	select {
	case wr, ok := <-wch:
		if !ok {
			t.Fatalf("watch from %d (compacted at %d): channel closed without a response", revs[1], compactRev)
		}
		if wr.CompactRevision != compactRev || !wr.Canceled || !errors.Is(wr.Err(), rpctypes.ErrCompacted) || len(wr.Events) != 0 {
			t.Fatalf("watch from %d (compacted at %d): got compact_revision %d canceled %v err %v, %d events; want compact_revision %d, canceled, %v",
				revs[1], compactRev, wr.CompactRevision, wr.Canceled, wr.Err(), len(wr.Events), compactRev, rpctypes.ErrCompacted)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("watch from %d (compacted at %d): no response within 10s", revs[1], compactRev)
	}
	select {
	case wr, ok := <-wch:
		if ok {
			t.Fatalf("watch from a compacted revision: channel still open after the compacted response, got %+v", wr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch from a compacted revision: channel not closed within 10s")
	}

	for _, from := range []int64{compactRev, compactRev + 1} {
		// A stream each: several history watches on one stream are
		// TestWatchHistoryOnOneStream's subject.
		wch := c.Client().Watch(wctx, "cp/", clientv3.WithPrefix(), clientv3.WithRev(from))
		var want []int64
		for _, r := range revs {
			if r >= from {
				want = append(want, r)
			}
		}
		evs := collectEvents(t, wch, len(want), fmt.Sprintf("watch from %d (compacted at %d)", from, compactRev))
		for i, ev := range evs {
			if ev.Kv.ModRevision != want[i] || ev.Type != mvccpb.PUT {
				t.Fatalf("watch from %d: event %d is %s %q@%d, want PUT at %d", from, i, evType(ev), ev.Kv.Key, ev.Kv.ModRevision, want[i])
			}
		}
	}

	raw := openRawWatch(t, c.Client())
	created := raw.create(t, &pb.WatchCreateRequest{Key: []byte("cp/"), RangeEnd: []byte("cp0"), StartRevision: compactRev - 1})
	if created.Canceled || created.WatchId < 0 {
		t.Fatalf("raw watch from %d: the created response is canceled or has no ID: %+v (etcd sends created first, then the compaction)", compactRev-1, created)
	}
	resp := raw.next(t, "the compacted response")
	if resp.WatchId != created.WatchId || resp.CompactRevision != compactRev || !resp.Canceled || len(resp.Events) != 0 {
		t.Fatalf("raw watch from %d: got %+v, want watch_id %d, compact_revision %d, canceled", compactRev-1, resp, created.WatchId, compactRev)
	}
}

// TestWatchHistoryOnOneStream: watches from old revisions opened one after
// another on one clientv3 stream (as kube-apiserver multiplexes its watches),
// some cancelled along the way, on an idle node with two ranges: each must
// deliver its history (the puts from its start revision) within 10s, and the
// ones still open a later put.
func TestWatchHistoryOnOneStream(t *testing.T) {
	c := testcluster.Start(t, 1)
	splitAt(t, c, c.Nodes[0], "hs/m")
	waitRanges(t, c, 2)
	ctx := ctxT(t)
	cli := c.Client()
	var revs []int64
	for i := range 6 {
		resp, err := cli.Put(ctx, []string{"hs/a", "hs/z"}[i%2], fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	var open []clientv3.WatchChan
	for i := range 4 {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := cli.Watch(wctx, "hs/", clientv3.WithPrefix(), clientv3.WithRev(revs[i]))
		evs := collectEvents(t, wch, len(revs)-i, fmt.Sprintf("watch %d on the stream, from %d (after %d earlier watches, every other one cancelled)", i, revs[i], i))
		for j, ev := range evs {
			if ev.Kv.ModRevision != revs[i+j] {
				t.Fatalf("watch %d from %d: event %d at %d, want %d", i, revs[i], j, ev.Kv.ModRevision, revs[i+j])
			}
		}
		if i%2 == 0 {
			wcancel()
		} else {
			open = append(open, wch)
		}
	}
	last, err := cli.Put(ctx, "hs/m", "last")
	if err != nil {
		t.Fatal(err)
	}
	for i, wch := range open {
		if evs := collectEvents(t, wch, 1, fmt.Sprintf("open watch %d, the put at %d", i, last.Header.Revision)); evs[0].Kv.ModRevision != last.Header.Revision {
			t.Fatalf("open watch %d: event at %d, want the put at %d", i, evs[0].Kv.ModRevision, last.Header.Revision)
		}
	}
}

// collectEvents reads events from a clientv3 watch until it has n, failing
// after 10s or on an error response.
func collectEvents(t *testing.T, wch clientv3.WatchChan, n int, what string) []*clientv3.Event {
	t.Helper()
	var evs []*clientv3.Event
	timeout := time.After(10 * time.Second)
	for len(evs) < n {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("%s: channel closed after %d of %d events", what, len(evs), n)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("%s: %v after %d of %d events", what, err, len(evs), n)
			}
			evs = append(evs, wr.Events...)
		case <-timeout:
			t.Fatalf("%s: %d of %d events within 10s", what, len(evs), n)
		}
	}
	return evs
}

// rawWatch is one Watch stream driven with etcd's raw gRPC messages; a
// goroutine reads it into respc.
type rawWatch struct {
	stream pb.Watch_WatchClient
	respc  chan *pb.WatchResponse
	errc   chan error
}

func openRawWatch(t *testing.T, cli *clientv3.Client) *rawWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(ctx, grpc.MaxCallRecvMsgSize(math.MaxInt32))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &rawWatch{stream: stream, respc: make(chan *pb.WatchResponse, 1024), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				r.errc <- err
				return
			}
			select {
			case r.respc <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *rawWatch) send(t *testing.T, req *pb.WatchRequest) {
	t.Helper()
	if err := r.stream.Send(req); err != nil {
		t.Fatalf("sending %v: %v", req, err)
	}
}

// next returns the stream's next response, failing after 10s.
func (r *rawWatch) next(t *testing.T, what string) *pb.WatchResponse {
	t.Helper()
	select {
	case resp := <-r.respc:
		return resp
	case err := <-r.errc:
		t.Fatalf("waiting for %s: stream ended: %v", what, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("waiting for %s: nothing within 10s", what)
	}
	return nil
}

// create sends a create request and returns the next response, which must be
// its created response.
func (r *rawWatch) create(t *testing.T, creq *pb.WatchCreateRequest) *pb.WatchResponse {
	t.Helper()
	r.send(t, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: creq}})
	resp := r.next(t, fmt.Sprintf("the created response to %v", creq))
	if !resp.Created {
		t.Fatalf("create %v: first response is not a created one: %+v", creq, resp)
	}
	return resp
}

// TestWatchSlowReader: a raw Watch stream that creates a prefix watch and then
// stops reading, while two clientv3 watchers on other connections of the same
// node read; 3000 writes of 1 KiB values across two ranges. The fast watchers
// get every event in order while the slow one still reads nothing; then the
// slow one reads and gets the same events, exactly once and in order (the
// server caught it up from history rather than dropping or cancelling it).
func TestWatchSlowReader(t *testing.T) {
	c := testcluster.Start(t, 1)
	splitAt(t, c, c.Nodes[0], "sl/5")
	waitRanges(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prefixEnd := clientv3.GetPrefixRangeEnd("sl/")

	// The slow stream: created, then left unread.
	slowCtx, slowCancel := context.WithCancel(ctx)
	defer slowCancel()
	slow, err := pb.NewWatchClient(c.Client().ActiveConnection()).Watch(slowCtx, grpc.MaxCallRecvMsgSize(math.MaxInt32))
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("sl/"), RangeEnd: []byte(prefixEnd)}}}); err != nil {
		t.Fatal(err)
	}
	created, err := slow.Recv()
	if err != nil || !created.Created || created.Canceled {
		t.Fatalf("slow watch: created response %+v, %v", created, err)
	}
	from := created.Header.Revision + 1
	var fast []*watchRecorder
	for i := range 2 {
		r := startRecorder(t, c.Client(), watchSpec{name: fmt.Sprintf("fast%d", i), key: "sl/", end: prefixEnd, rev: from})
		r.waitCreated(t)
		fast = append(fast, r)
	}

	const (
		writers   = 8
		perWriter = 375
	)
	var (
		mu     sync.Mutex
		writes []wcWrite
		wg     sync.WaitGroup
	)
	value := strings.Repeat("x", 1024)
	writeStart := time.Now()
	for w := range writers {
		cli := c.Client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			keyOf := func(i int) string { return fmt.Sprintf("sl/%d/%03d", (w+i)%10, i%50) }
			for i := range perWriter {
				key := keyOf(i)
				v := fmt.Sprintf("w%d-%d-%s", w, i, value)
				opCtx, opCancel := context.WithTimeout(ctx, 5*time.Second)
				rec := wcWrite{op: "put", keys: []string{key}, values: []string{v}}
				if i%10 == 9 { // delete what this writer put five operations ago
					key = keyOf(i - 5)
					rec = wcWrite{op: "delete", del: intervalOf(key, "")}
					resp, err := cli.Delete(opCtx, key, clientv3.WithPrevKV())
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
						for _, kv := range resp.PrevKvs {
							rec.keys = append(rec.keys, string(kv.Key))
						}
					}
				} else {
					resp, err := cli.Put(opCtx, key, v)
					if rec.state = writeState(err); err == nil {
						rec.rev = resp.Header.Revision
					}
				}
				opCancel()
				mu.Lock()
				writes = append(writes, rec)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	finalRev := maxAckedRev(writes)
	t.Logf("writes: %s in %v; last acknowledged revision %d", countWrites(writes), time.Since(writeStart).Round(time.Millisecond), finalRev)
	for _, s := range waitCovered(finalRev, 30*time.Second, fast...) {
		t.Fatal(s)
	}
	t.Logf("fast watchers covered the last write %v after the first write", time.Since(writeStart).Round(time.Millisecond))
	var logs []*watchLog
	for _, r := range fast {
		r.stop()
		l, err := r.snapshot()
		if err != nil {
			t.Fatalf("watch %s ended with %v", l.name, err)
		}
		logs = append(logs, &l)
	}
	reportProblems(t, "fast watchers", checkWatchLogs(logs, writes))

	// Now the slow reader reads everything.
	readStart := time.Now()
	slowLog := &watchLog{name: "slow(raw)", iv: intervalOf("sl/", prefixEnd), reqStart: from, minRev: from}
	recvc := make(chan *pb.WatchResponse)
	errc := make(chan error, 1)
	go func() {
		for {
			resp, err := slow.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case recvc <- resp:
			case <-slowCtx.Done():
				errc <- slowCtx.Err()
				return
			}
		}
	}()
	defer func() { slowCancel(); <-errc }()
	deadline := time.After(30 * time.Second)
	for slowLog.progress() < finalRev {
		select {
		case resp := <-recvc:
			if resp.Canceled || resp.CompactRevision != 0 || resp.WatchId != created.WatchId {
				t.Fatalf("slow watch: unexpected response %+v (watch id %d)", resp, created.WatchId)
			}
			if len(resp.Events) > 0 {
				slowLog.resps = append(slowLog.resps, watchResp{headerRev: resp.Header.GetRevision(), events: resp.Events})
			}
		case err := <-errc:
			errc <- err
			t.Fatalf("slow watch: stream ended after covering %d of %d: %v", slowLog.progress(), finalRev, err)
		case <-deadline:
			t.Fatalf("slow watch: covered %d of %d within 30s of reading", slowLog.progress(), finalRev)
		}
	}
	events, _ := slowLog.eventCount()
	batches := 0 // responses holding several revisions: catch-up from history
	for _, r := range slowLog.resps {
		if len(r.events) > 1 && r.events[0].Kv.ModRevision != r.events[len(r.events)-1].Kv.ModRevision {
			batches++
		}
	}
	t.Logf("slow watcher caught up %d events in %d responses (%d of them with several revisions) in %v",
		events, len(slowLog.resps), batches, time.Since(readStart).Round(time.Millisecond))
	reportProblems(t, "slow watcher", checkWatchLogs(append(logs, slowLog), writes))
}

// TestWatchSemantics: etcd's watch edge cases through clientv3 and raw gRPC,
// each subtest on its own keys of one node with two ranges.
func TestWatchSemantics(t *testing.T) {
	const maxRequestBytes = 1 << 20
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.WatchProgressNotifyInterval = 300 * time.Millisecond
		cfg.MaxRequestBytes = maxRequestBytes
	})
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	cli := c.Client()

	// WithFilterPut delivers only deletes (NOPUT), WithFilterDelete only puts
	// (NODELETE).
	t.Run("filters", func(t *testing.T) {
		ctx := ctxT(t)
		noPut := cli.Watch(ctx, "ft/k", clientv3.WithFilterPut())
		noDelete := cli.Watch(ctx, "ft/k", clientv3.WithFilterDelete())
		waitWatchesReady(t, cli, "ft/k")
		var delRevs, putRevs []int64
		for i := range 2 {
			p, err := cli.Put(ctx, "ft/k", fmt.Sprint(i))
			if err != nil {
				t.Fatal(err)
			}
			d, err := cli.Delete(ctx, "ft/k")
			if err != nil {
				t.Fatal(err)
			}
			putRevs, delRevs = append(putRevs, p.Header.Revision), append(delRevs, d.Header.Revision)
		}
		for i, ev := range collectEvents(t, noPut, 2, "NOPUT watch") {
			if ev.Type != mvccpb.DELETE || ev.Kv.ModRevision != delRevs[i] {
				t.Errorf("NOPUT watch: event %d is %s@%d, want DELETE@%d", i, evType(ev), ev.Kv.ModRevision, delRevs[i])
			}
		}
		// The last delete follows the last put, so a delete let through would
		// show before the second put.
		for i, ev := range collectEvents(t, noDelete, 2, "NODELETE watch") {
			if ev.Type != mvccpb.PUT || ev.Kv.ModRevision != putRevs[i] || string(ev.Kv.Value) != fmt.Sprint(i) {
				t.Errorf("NODELETE watch: event %d is %s@%d %q, want PUT@%d %q", i, evType(ev), ev.Kv.ModRevision, ev.Kv.Value, putRevs[i], fmt.Sprint(i))
			}
		}
	})

	// WithPrevKV: none on a creation, the previous version on an update and a
	// delete (whose own kv is the key at the delete's revision); none at all
	// without the option.
	t.Run("prev_kv", func(t *testing.T) {
		ctx := ctxT(t)
		with := cli.Watch(ctx, "pk/k", clientv3.WithPrevKV())
		without := cli.Watch(ctx, "pk/k")
		waitWatchesReady(t, cli, "pk/k")
		p1, err := cli.Put(ctx, "pk/k", "v1")
		if err != nil {
			t.Fatal(err)
		}
		p2, err := cli.Put(ctx, "pk/k", "v2")
		if err != nil {
			t.Fatal(err)
		}
		d, err := cli.Delete(ctx, "pk/k")
		if err != nil {
			t.Fatal(err)
		}
		r1, r2, r3 := p1.Header.Revision, p2.Header.Revision, d.Header.Revision
		evs := collectEvents(t, with, 3, "prev_kv watch")
		if evs[0].PrevKv != nil {
			t.Errorf("creation PUT@%d carries prev_kv %v", r1, evs[0].PrevKv)
		}
		if pkv := evs[1].PrevKv; pkv == nil || string(pkv.Value) != "v1" || pkv.ModRevision != r1 || pkv.Version != 1 || pkv.CreateRevision != r1 {
			t.Errorf("update PUT@%d: prev_kv %v, want v1 mod %d create %d version 1", r2, pkv, r1, r1)
		}
		if pkv := evs[2].PrevKv; evs[2].Type != mvccpb.DELETE || evs[2].Kv.ModRevision != r3 || string(evs[2].Kv.Key) != "pk/k" ||
			pkv == nil || string(pkv.Value) != "v2" || pkv.ModRevision != r2 || pkv.Version != 2 {
			t.Errorf("DELETE@%d: event %v, want kv pk/k@%d and prev_kv v2 mod %d version 2", r3, evs[2], r3, r2)
		}
		for i, ev := range collectEvents(t, without, 3, "watch without prev_kv") {
			if ev.PrevKv != nil {
				t.Errorf("watch without prev_kv: event %d carries prev_kv %v", i, ev.PrevKv)
			}
		}
	})

	// A Txn putting three keys is one response with three events at the Txn's
	// revision.
	t.Run("txn is one response", func(t *testing.T) {
		ctx := ctxT(t)
		wch := cli.Watch(ctx, "tx/", clientv3.WithPrefix())
		waitWatchesReady(t, cli, "tx/")
		resp, err := cli.Txn(ctx).Then(clientv3.OpPut("tx/a", "1"), clientv3.OpPut("tx/b", "2"), clientv3.OpPut("tx/c", "3")).Commit()
		if err != nil {
			t.Fatal(err)
		}
		select {
		case wr := <-wch:
			var keys []string
			for _, ev := range wr.Events {
				keys = append(keys, string(ev.Kv.Key))
				if ev.Kv.ModRevision != resp.Header.Revision {
					t.Errorf("event %q at %d, the Txn's revision is %d", ev.Kv.Key, ev.Kv.ModRevision, resp.Header.Revision)
				}
			}
			sort.Strings(keys)
			if strings.Join(keys, ",") != "tx/a,tx/b,tx/c" {
				t.Errorf("the Txn's first watch response holds %q, want all of tx/a, tx/b, tx/c", keys)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no watch response for the Txn within 10s")
		}
	})

	// A watch from a revision not yet reached delivers the events from that
	// revision on, once writes reach it, and none before.
	t.Run("future start revision", func(t *testing.T) {
		ctx := ctxT(t)
		get, err := cli.Get(ctx, "fu/")
		if err != nil {
			t.Fatal(err)
		}
		from := get.Header.Revision + 5
		wch := cli.Watch(ctx, "fu/", clientv3.WithPrefix(), clientv3.WithRev(from))
		var want []int64
		for i := 0; i < 50 && (len(want) < 3); i++ {
			resp, err := cli.Put(ctx, fmt.Sprintf("fu/%d", i%3), fmt.Sprint(i))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Header.Revision >= from {
				want = append(want, resp.Header.Revision)
			}
		}
		for i, ev := range collectEvents(t, wch, len(want), fmt.Sprintf("watch from future revision %d", from)) {
			if ev.Kv.ModRevision != want[i] {
				t.Errorf("watch from %d: event %d at %d, want %d (the puts at or after %d: %v)", from, i, ev.Kv.ModRevision, want[i], from, want)
			}
		}
	})

	// range_end "\x00" is every key from key on (WithFromKey), and an empty
	// key with range_end "\x00" every key.
	t.Run("from key", func(t *testing.T) {
		ctx := ctxT(t)
		fromKey := cli.Watch(ctx, "fk/m", clientv3.WithFromKey())
		raw := openRawWatch(t, c.Client())
		all := raw.create(t, &pb.WatchCreateRequest{Key: nil, RangeEnd: []byte{0}})
		if all.Canceled {
			t.Fatalf("watch of every key (empty key, range_end \\x00) refused: %+v", all)
		}
		waitWatchesReady(t, cli, "fk/m")
		var revs []int64
		for _, k := range []string{"fk/a", "fk/z", "zz-fk"} {
			resp, err := cli.Put(ctx, k, "v")
			if err != nil {
				t.Fatal(err)
			}
			revs = append(revs, resp.Header.Revision)
		}
		evs := collectEvents(t, fromKey, 2, "from-key watch")
		if string(evs[0].Kv.Key) != "fk/z" || string(evs[1].Kv.Key) != "zz-fk" || evs[1].Kv.ModRevision != revs[2] {
			t.Errorf("from-key watch on fk/m: got %q@%d, %q@%d; want fk/z@%d, zz-fk@%d", evs[0].Kv.Key, evs[0].Kv.ModRevision, evs[1].Kv.Key, evs[1].Kv.ModRevision, revs[1], revs[2])
		}
		var got []string
		for len(got) == 0 || got[len(got)-1] != "zz-fk" {
			resp := raw.next(t, "events of the all-keys watch")
			for _, ev := range resp.Events {
				got = append(got, string(ev.Kv.Key))
			}
		}
		if strings.Join(got, ",") != "fk/a,fk/z,zz-fk" {
			t.Errorf("all-keys watch: got %q, want fk/a, fk/z, zz-fk", got)
		}
	})

	// Watch IDs chosen by the client are used; a duplicate is refused
	// (created and canceled, watch_id -1, a reason); automatic IDs never
	// collide with chosen ones; a cancel request is answered with canceled
	// and that ID, and the watch delivers nothing more; the ID can be reused.
	t.Run("watch ids and cancel", func(t *testing.T) {
		ctx := ctxT(t)
		raw := openRawWatch(t, c.Client())
		first := raw.create(t, &pb.WatchCreateRequest{Key: []byte("id/a"), WatchId: 5})
		if first.WatchId != 5 || first.Canceled {
			t.Fatalf("create with watch_id 5: %+v", first)
		}
		dup := raw.create(t, &pb.WatchCreateRequest{Key: []byte("id/b"), WatchId: 5})
		if !dup.Canceled || dup.WatchId != -1 || dup.CancelReason == "" {
			t.Fatalf("create with a duplicate watch_id 5: %+v; want created and canceled, watch_id -1, a cancel_reason", dup)
		}
		auto1 := raw.create(t, &pb.WatchCreateRequest{Key: []byte("id/b")})
		auto2 := raw.create(t, &pb.WatchCreateRequest{Key: []byte("id/c")})
		if auto1.Canceled || auto2.Canceled || auto1.WatchId < 0 || auto2.WatchId < 0 ||
			auto1.WatchId == 5 || auto2.WatchId == 5 || auto1.WatchId == auto2.WatchId {
			t.Fatalf("automatic watch IDs next to chosen ID 5: %d (canceled %v), %d (canceled %v)", auto1.WatchId, auto1.Canceled, auto2.WatchId, auto2.Canceled)
		}
		putRev := func(key string) int64 {
			resp, err := cli.Put(ctx, key, "v")
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}
		ra, rb := putRev("id/a"), putRev("id/b")
		got := map[int64]int64{}
		for len(got) < 2 {
			resp := raw.next(t, "events for watches 5 and "+fmt.Sprint(auto1.WatchId))
			if len(resp.Events) != 1 {
				t.Fatalf("want one event, got %+v", resp)
			}
			got[resp.WatchId] = resp.Events[0].Kv.ModRevision
		}
		if got[5] != ra || got[auto1.WatchId] != rb {
			t.Fatalf("events by watch ID %v, want 5:%d and %d:%d", got, ra, auto1.WatchId, rb)
		}
		raw.send(t, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 5}}})
		canceled := raw.next(t, "the cancel response")
		if !canceled.Canceled || canceled.WatchId != 5 || canceled.Created || len(canceled.Events) != 0 {
			t.Fatalf("cancel of watch 5: %+v, want canceled with watch_id 5", canceled)
		}
		putRev("id/a") // watch 5 is gone: its event must not come
		rb2 := putRev("id/b")
		next := raw.next(t, "the event after the cancel")
		if next.WatchId != auto1.WatchId || len(next.Events) != 1 || next.Events[0].Kv.ModRevision != rb2 {
			t.Fatalf("after canceling watch 5: got %+v, want watch %d's event at %d", next, auto1.WatchId, rb2)
		}
		again := raw.create(t, &pb.WatchCreateRequest{Key: []byte("id/d"), WatchId: 5})
		if again.WatchId != 5 || again.Canceled {
			t.Fatalf("reusing watch_id 5 after its cancel: %+v", again)
		}
	})

	// Bad create requests are refused (created and canceled, watch_id -1, a
	// reason) without ending the stream: range_end below the key, a negative
	// start revision.
	t.Run("bad create requests", func(t *testing.T) {
		raw := openRawWatch(t, c.Client())
		for _, creq := range []*pb.WatchCreateRequest{
			{Key: []byte("bc/z"), RangeEnd: []byte("bc/a")},
			{Key: []byte("bc/a"), StartRevision: -1},
		} {
			resp := raw.create(t, creq)
			if !resp.Canceled || resp.WatchId != -1 || resp.CancelReason == "" {
				t.Errorf("create %v: %+v; want created and canceled, watch_id -1, a cancel_reason", creq, resp)
			}
		}
		if ok := raw.create(t, &pb.WatchCreateRequest{Key: []byte("bc/a")}); ok.Canceled || ok.WatchId < 0 {
			t.Fatalf("a good create after refused ones: %+v", ok)
		}
	})

	// RequestProgress: clientv3 gets a progress notification whose revision is
	// at least that of a Put acknowledged before the request; on a raw stream
	// it has watch_id -1 (for every watch of the stream), no events, and is
	// neither created nor canceled.
	t.Run("request progress", func(t *testing.T) {
		ctx := ctxT(t)
		pcli := c.Client()
		wch := pcli.Watch(ctx, "rp/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		if wr := <-wch; !wr.Created {
			t.Fatalf("first response is not the created one: %+v", wr)
		}
		put, err := cli.Put(ctx, "rp/x", "v")
		if err != nil {
			t.Fatal(err)
		}
		putRev := put.Header.Revision
		var progressRev int64
		deadline := time.After(10 * time.Second)
		ask := time.NewTicker(time.Second)
		defer ask.Stop()
		if err := pcli.RequestProgress(ctx); err != nil {
			t.Fatal(err)
		}
		sawPut := false
		for progressRev == 0 {
			select {
			case wr := <-wch:
				switch {
				case wr.Err() != nil:
					t.Fatal(wr.Err())
				case wr.IsProgressNotify():
					progressRev = wr.Header.Revision
				default:
					for _, ev := range wr.Events {
						sawPut = sawPut || ev.Kv.ModRevision == putRev
					}
				}
			case <-ask.C:
				_ = pcli.RequestProgress(ctx)
			case <-deadline:
				t.Fatal("no progress notification within 10s of RequestProgress")
			}
		}
		if progressRev < putRev || !sawPut {
			t.Fatalf("progress notification at %d (put event seen before it: %v), the Put acknowledged before the request is at %d", progressRev, sawPut, putRev)
		}

		raw := openRawWatch(t, c.Client())
		wa := raw.create(t, &pb.WatchCreateRequest{Key: []byte("rp/a")})
		wb := raw.create(t, &pb.WatchCreateRequest{Key: []byte("rp/b")})
		put, err = cli.Put(ctx, "rp/other", "v")
		if err != nil {
			t.Fatal(err)
		}
		for attempt := 0; ; attempt++ {
			raw.send(t, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
			select {
			case resp := <-raw.respc:
				if resp.WatchId != -1 || len(resp.Events) != 0 || resp.Created || resp.Canceled || resp.Header.GetRevision() < put.Header.Revision {
					t.Fatalf("raw progress response %+v (watches %d, %d); want watch_id -1, no events, header revision ≥ %d", resp, wa.WatchId, wb.WatchId, put.Header.Revision)
				}
				return
			case err := <-raw.errc:
				t.Fatalf("raw stream ended: %v", err)
			case <-time.After(time.Second):
				if attempt == 9 {
					t.Fatal("raw stream: no progress response within 10s")
				}
			}
		}
	})

	// With progress_notify, an idle watch gets periodic notifications
	// (--watch-progress-notify-interval, here 300ms) whose revision reaches
	// the writes acknowledged before, and after an event, that event's revision.
	t.Run("periodic progress notify", func(t *testing.T) {
		ctx := ctxT(t)
		before, err := cli.Put(ctx, "pn-other", "v")
		if err != nil {
			t.Fatal(err)
		}
		wch := c.Client().Watch(ctx, "pn/", clientv3.WithPrefix(), clientv3.WithProgressNotify())
		waitProgressAtLeast(t, wch, before.Header.Revision, "idle watch")
		put, err := cli.Put(ctx, "pn/x", "v")
		if err != nil {
			t.Fatal(err)
		}
		waitProgressAtLeast(t, wch, put.Header.Revision, "watch after its event")
	})

	// With fragment set, a response larger than the server's request limit is
	// split into messages marked fragment except the last; clientv3
	// reassembles them. Four 240 KiB puts in one Txn (under the 1 MiB
	// --max-request-bytes) make a response of about 1.9 MiB with prev_kv, above
	// the limit even with etcd's 512 KiB gRPC allowance.
	t.Run("fragment", func(t *testing.T) {
		ctx := ctxT(t)
		const valueBytes = 240 << 10
		big := func(c byte) string { return strings.Repeat(string(c), valueBytes) }
		var keys []string
		for i := range 4 {
			keys = append(keys, fmt.Sprintf("fr/%d", i))
			if _, err := cli.Put(ctx, keys[i], big('a')); err != nil {
				t.Fatal(err)
			}
		}
		raw := openRawWatch(t, c.Client())
		created := raw.create(t, &pb.WatchCreateRequest{Key: []byte("fr/"), RangeEnd: []byte("fr0"), PrevKv: true, Fragment: true})
		fragCli, wholeCli := c.Client(), c.Client()
		fragmented := fragCli.Watch(ctx, "fr/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithFragment(), clientv3.WithCreatedNotify())
		whole := wholeCli.Watch(ctx, "fr/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
		for _, wch := range []clientv3.WatchChan{fragmented, whole} {
			if wr := <-wch; !wr.Created {
				t.Fatalf("first response is not the created one: %+v", wr)
			}
		}
		var ops []clientv3.Op
		for _, k := range keys {
			ops = append(ops, clientv3.OpPut(k, big('b')))
		}
		txn, err := cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			t.Fatalf("Txn of 4 x 240 KiB under --max-request-bytes 1 MiB: %v", err)
		}
		var msgs []*pb.WatchResponse
		events := 0
		for len(msgs) == 0 || msgs[len(msgs)-1].Fragment {
			resp := raw.next(t, "the fragments")
			if resp.WatchId != created.WatchId || resp.Canceled {
				t.Fatalf("fragment for watch %d canceled %v, want watch %d", resp.WatchId, resp.Canceled, created.WatchId)
			}
			if size := proto.Size(resp); len(resp.Events) > 1 && size >= maxRequestBytes+512<<10 {
				t.Errorf("fragment %d: %d bytes with %d events, above the limit %d", len(msgs), size, len(resp.Events), maxRequestBytes+512<<10)
			}
			msgs = append(msgs, resp)
			events += len(resp.Events)
		}
		if len(msgs) < 2 || events != 4 {
			t.Fatalf("fragmented response: %d messages with %d events in all; want at least 2 messages (%d bytes of events), 4 events", len(msgs), events, 8*valueBytes)
		}
		t.Logf("the Txn's %d events came in %d fragments", events, len(msgs))
		for name, wch := range map[string]clientv3.WatchChan{"with fragment": fragmented, "without fragment": whole} {
			select {
			case wr := <-wch:
				if len(wr.Events) != 4 {
					t.Fatalf("clientv3 watch %s: first response has %d events, want the Txn's 4", name, len(wr.Events))
				}
				for i, ev := range wr.Events {
					if ev.Kv.ModRevision != txn.Header.Revision || string(ev.Kv.Value) != big('b') || ev.PrevKv == nil || string(ev.PrevKv.Value) != big('a') {
						t.Fatalf("clientv3 watch %s: event %d %q@%d (value %d bytes, prev_kv %v), want the Txn's put at %d", name, i, ev.Kv.Key, ev.Kv.ModRevision, len(ev.Kv.Value), ev.PrevKv != nil, txn.Header.Revision)
					}
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("clientv3 watch %s: no response within 10s", name)
			}
		}
	})
}

// waitWatchesReady makes sure the watches just opened on cli for key are
// established on the server: etcd's clientv3 creates them in order on one
// stream, so once a further watch's created response arrives, they are too.
func waitWatchesReady(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wch := cli.Watch(ctx, "ready/"+key, clientv3.WithCreatedNotify())
	select {
	case wr := <-wch:
		if !wr.Created {
			t.Fatalf("watch on %s: %+v (%v)", key, wr, wr.Err())
		}
	case <-ctx.Done():
		t.Fatalf("watch on %s not created within 10s", key)
	}
}

// waitProgressAtLeast reads a watch until a progress notification at rev or
// above, failing after 10s.
func waitProgressAtLeast(t *testing.T, wch clientv3.WatchChan, rev int64, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("%s: watch ended: %v", what, wr.Err())
			}
			if wr.IsProgressNotify() && wr.Header.Revision >= rev {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no progress notification at %d or above within 10s", what, rev)
		}
	}
}

// lockedBuffer collects a subprocess's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// etcdctlBackground runs etcdctl against endpoint until the test ends (or 60s
// pass), collecting its stdout and stderr.
func etcdctlBackground(t *testing.T, endpoint string, args ...string) (stdout, stderr *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "etcdctl"), append([]string{"--endpoints", endpoint}, args...)...)
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return stdout, stderr
}

// TestWatchEtcdctl: `etcdctl watch --prefix /w/` from now, and from an old
// revision with --prev-kv (simple output) and with -w json, against a node
// with three ranges; puts, a Txn, deletes and a range delete across the
// ranges. Each output must list exactly the events in revision order with
// their keys and values (and previous values, and revisions in JSON).
func TestWatchEtcdctl(t *testing.T) {
	binaries(t)
	c := testcluster.Start(t, 1)
	splitAt(t, c, c.Nodes[0], "/w/g")
	splitAt(t, c, c.Nodes[0], "/w/p")
	waitRanges(t, c, 3)
	ctx := ctxT(t)
	cli := c.Client()
	endpoint := c.Nodes[0].ClientURL

	type event struct {
		typ        string // PUT or DELETE
		key, value string
		prev       *string
		rev        int64
	}
	var events []event
	current := map[string]string{}
	record := func(rev int64, typ, key, value string) {
		var prev *string
		if v, ok := current[key]; ok {
			prev = &v
		}
		if typ == "PUT" {
			current[key] = value
		} else {
			delete(current, key)
		}
		events = append(events, event{typ, key, value, prev, rev})
	}
	put := func(key, value string) {
		t.Helper()
		resp, err := cli.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		record(resp.Header.Revision, "PUT", key, value)
	}

	put("/w/0start", "s")
	startRev := events[0].rev
	fromNow, fromNowErr := etcdctlBackground(t, endpoint, "watch", "--prefix", "/w/")
	prevKV, prevKVErr := etcdctlBackground(t, endpoint, "watch", "--prefix", "/w/", "--rev", fmt.Sprint(startRev), "--prev-kv")
	asJSON, asJSONErr := etcdctlBackground(t, endpoint, "-w", "json", "watch", "--prefix", "/w/", "--rev", fmt.Sprint(startRev))
	// etcdctl prints nothing when its watch is created: put a marker until
	// the from-now watch shows one.
	for i := 0; !strings.Contains(fromNow.String(), "/w/0ready"); i++ {
		if i == 100 {
			t.Fatalf("etcdctl watch from now shows no event within 10s; stdout %q stderr %q", fromNow, fromNowErr)
		}
		put("/w/0ready", fmt.Sprintf("ready-%d", i))
		time.Sleep(100 * time.Millisecond)
	}
	readyEvents := len(events) - 1
	put("/w/a/1", "a1")
	put("/w/h/1", "h1")
	put("/w/q/1", "q1")
	put("/w/a/1", "a2")
	del, err := cli.Delete(ctx, "/w/h/1")
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete /w/h/1: %v %v", del, err)
	}
	record(del.Header.Revision, "DELETE", "/w/h/1", "")
	txn, err := cli.Txn(ctx).Then(clientv3.OpPut("/w/q/2", "q2"), clientv3.OpPut("/w/q/3", "q3")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	record(txn.Header.Revision, "PUT", "/w/q/2", "q2")
	record(txn.Header.Revision, "PUT", "/w/q/3", "q3")
	delRange, err := cli.Delete(ctx, "/w/a/", clientv3.WithPrefix())
	if err != nil || delRange.Deleted != 1 {
		t.Fatalf("delete prefix /w/a/: %v %v", delRange, err)
	}
	record(delRange.Header.Revision, "DELETE", "/w/a/1", "")
	put("/w/h/1", "h2")
	put("/w/z/end", "done")

	endJSON := base64.StdEncoding.EncodeToString([]byte("/w/z/end"))
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(fromNow.String(), "/w/z/end") || !strings.Contains(prevKV.String(), "/w/z/end") || !strings.Contains(asJSON.String(), endJSON) {
		if time.Now().After(deadline) {
			t.Fatalf("etcdctl watches did not show the last write within 15s:\nfrom now: %q %q\n--prev-kv: %q %q\njson: %q %q",
				fromNow, fromNowErr, prevKV, prevKVErr, asJSON, asJSONErr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	render := func(evs []event, withPrev bool) string {
		var b strings.Builder
		for _, e := range evs {
			b.WriteString(e.typ + "\n")
			if withPrev && e.prev != nil {
				fmt.Fprintf(&b, "%s\n%s\n", e.key, *e.prev)
			}
			fmt.Fprintf(&b, "%s\n%s\n", e.key, e.value)
		}
		return b.String()
	}
	// From now: some of the marker puts (at least the last; the start put is
	// tolerated too, as a watch from now may begin below a write just
	// acknowledged), then every write.
	got, tail := fromNow.String(), render(events[1+readyEvents:], false)
	ok := false
	for j := 0; j < 1+readyEvents && !ok; j++ {
		ok = got == render(events[j:1+readyEvents], false)+tail
	}
	if !ok {
		t.Errorf("etcdctl watch --prefix /w/: output\n%s\nwant some /w/0ready puts then\n%s", got, tail)
	}
	if want := render(events, true); prevKV.String() != want {
		t.Errorf("etcdctl watch --prefix /w/ --rev %d --prev-kv: output\n%s\nwant\n%s", startRev, prevKV, want)
	}

	// JSON: one WatchResponse per line; event type omitted for PUT (0).
	type jsonKV struct {
		Key         []byte `json:"key"`
		Value       []byte `json:"value"`
		ModRevision int64  `json:"mod_revision"`
	}
	var gotJSON []event
	for _, line := range strings.Split(strings.TrimSpace(asJSON.String()), "\n") {
		var wr struct {
			Header struct {
				Revision int64 `json:"revision"`
			}
			Events []struct {
				Type int32   `json:"type"`
				Kv   *jsonKV `json:"kv"`
			}
		}
		if err := json.Unmarshal([]byte(line), &wr); err != nil {
			t.Fatalf("etcdctl -w json watch: line %q: %v", line, err)
		}
		for _, ev := range wr.Events {
			typ := "PUT"
			if ev.Type == int32(mvccpb.DELETE) {
				typ = "DELETE"
			}
			if ev.Kv.ModRevision > wr.Header.Revision {
				t.Errorf("etcdctl -w json watch: event at %d in a response with header revision %d", ev.Kv.ModRevision, wr.Header.Revision)
			}
			gotJSON = append(gotJSON, event{typ: typ, key: string(ev.Kv.Key), value: string(ev.Kv.Value), rev: ev.Kv.ModRevision})
		}
	}
	var wantJSON []string
	for _, e := range events {
		wantJSON = append(wantJSON, fmt.Sprintf("%s %s=%q@%d", e.typ, e.key, e.value, e.rev))
	}
	var gotStrs []string
	for _, e := range gotJSON {
		gotStrs = append(gotStrs, fmt.Sprintf("%s %s=%q@%d", e.typ, e.key, e.value, e.rev))
	}
	if strings.Join(gotStrs, "\n") != strings.Join(wantJSON, "\n") {
		t.Errorf("etcdctl -w json watch --rev %d: events\n%s\nwant\n%s", startRev, strings.Join(gotStrs, "\n"), strings.Join(wantJSON, "\n"))
	}
}
