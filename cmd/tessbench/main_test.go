package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/tesserakv/tessera/bench"
	"github.com/tesserakv/tessera/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testcluster.LeakOptions()...)
}

// The fields every JSON result must carry.
var (
	resultKeys = []string{"workload", "case", "target", "topology", "params", "started", "count", "errors",
		"error_samples", "conflicts", "unsupported", "duration_seconds", "throughput_per_second", "latency_ms",
		"operations", "server"}
	latencyKeys = []string{"mean", "p50", "p90", "p99", "p99_9", "max"}
)

type run struct {
	name     string
	workload string
	args     []string
	// requests the run must account for (count + errors); -1 when the target
	// refuses mid-run (the requests in flight then are unknown).
	requests        int64
	wantUnsupported string
	check           func(t *testing.T, r *bench.Result)
}

// tessbench runs the command line in-process and returns the decoded
// result after checking it is complete JSON.
func tessbench(t *testing.T, args []string, wantExit int) (*bench.Result, []byte) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := bench.Main(args, &stdout, &stderr); code != wantExit {
		t.Fatalf("tessbench %s: exit %d, want %d\nstderr: %s\nstdout: %s", strings.Join(args, " "), code, wantExit, stderr.String(), stdout.String())
	}
	var m map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	for _, k := range resultKeys {
		if _, ok := m[k]; !ok {
			t.Errorf("result lacks %q", k)
		}
	}
	lat, _ := m["latency_ms"].(map[string]any)
	for _, k := range latencyKeys {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency_ms lacks %q", k)
		}
	}
	var r bench.Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return &r, stdout.Bytes()
}

func runAll(t *testing.T, endpoint, target string, runs []run) (files []string) {
	dir := t.TempDir()
	for _, rc := range runs {
		t.Run(rc.name, func(t *testing.T) {
			args := append([]string{rc.workload, "--endpoints", endpoint, "--json", "--clients", "8", "--conns", "2",
				"--case", rc.name, "--target", target, "--topology", "1-node"}, rc.args...)
			wantExit := bench.ExitOK
			if rc.wantUnsupported != "" {
				wantExit = bench.ExitUnsupported
			}
			r, raw := tessbench(t, args, wantExit)
			if r.Workload != rc.workload || r.Case != rc.name || r.Target != target || r.Params.Clients != 8 {
				t.Errorf("labels: workload %q case %q target %q clients %d", r.Workload, r.Case, r.Target, r.Params.Clients)
			}
			if got := r.Count + r.Errors; rc.requests >= 0 && got != rc.requests {
				t.Errorf("count %d + errors %d = %d, want the %d requests sent", r.Count, r.Errors, got, rc.requests)
			}
			if rc.wantUnsupported != "" {
				if !strings.Contains(r.Unsupported, rc.wantUnsupported) {
					t.Errorf("unsupported = %q, want it to mention %q", r.Unsupported, rc.wantUnsupported)
				}
			} else {
				if r.Unsupported != "" || r.Errors != 0 {
					t.Errorf("unsupported %q, %d errors %v", r.Unsupported, r.Errors, r.ErrorSamples)
				}
				if r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 || r.Throughput <= 0 || r.DurationSeconds <= 0 {
					t.Errorf("implausible numbers: %+v, %v/s in %vs", r.Latency, r.Throughput, r.DurationSeconds)
				}
			}
			if rc.check != nil {
				rc.check(t, r)
			}
			f := filepath.Join(dir, rc.name+".json")
			if err := os.WriteFile(f, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		})
	}
	return files
}

func opCount(t *testing.T, r *bench.Result, op string, want int64) {
	t.Helper()
	o := r.Operations[op]
	if o == nil || o.Count != want || o.Errors != 0 {
		t.Errorf("operation %s: %+v, want %d ok", op, o, want)
	}
}

func TestEveryWorkloadAgainstTessera(t *testing.T) {
	c := testcluster.Start(t, 1)
	pid := fmt.Sprint(os.Getpid()) // the in-process server
	// txn-span's two keys in two ranges, as bench/compare.sh splits them.
	splitCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Nodes[0].Server.SplitRange(splitCtx, "s/m"); err != nil {
		t.Fatal(err)
	}
	files := runAll(t, c.Nodes[0].ClientURL, bench.TargetTessera, []run{
		{name: "put-seq", workload: "put", requests: 300, args: []string{"--total", "300", "--sequential-keys", "--server-pids", pid},
			check: func(t *testing.T, r *bench.Result) {
				if r.Server == nil || r.Server.CPUSeconds <= 0 || r.Server.RSSEndBytes <= 0 {
					t.Errorf("server stats %+v", r.Server)
				}
			}},
		{name: "put-random", workload: "put", requests: 200, args: []string{"--total", "200", "--key-size", "32", "--value-size", "1000", "--rate", "2000"}},
		{name: "range-lin", workload: "range", requests: 200, args: []string{"--total", "200", "--key-space", "50"}},
		{name: "range-prefix-ser", workload: "range", requests: 100, args: []string{"--total", "100", "--key-space", "50", "--prefix", "--limit", "10", "--consistency", "s"}},
		{name: "txn-put", workload: "txn-put", requests: 300, args: []string{"--total", "300", "--key-space", "5"},
			check: func(t *testing.T, r *bench.Result) {
				// 8 clients CAS-ing 5 keys: the first write of each key by all
				// but one client conflicts.
				if r.Conflicts == 0 || r.Conflicts >= r.Count {
					t.Errorf("%d conflicts in %d txns", r.Conflicts, r.Count)
				}
			}},
		{name: "txn-span", workload: "txn-span", requests: 200, args: []string{"--total", "200", "--key-space", "20", "--sequential-keys"},
			check: func(t *testing.T, r *bench.Result) {
				// Each Txn wrote both of its keys, in two ranges, at one revision.
				cli := c.Client(c.Nodes[0].ClientURL)
				get, err := cli.Get(splitCtx, "s/", clientv3.WithPrefix())
				if err != nil || len(get.Kvs) != 40 {
					t.Fatalf("got %v %v, want 20 keys under s/a/ and 20 under s/z/", get, err)
				}
				for i, kv := range get.Kvs[:20] {
					if twin := get.Kvs[20+i]; kv.ModRevision != twin.ModRevision || !bytes.Equal(kv.Value, twin.Value) {
						t.Errorf("%s at %d and %s at %d differ", kv.Key, kv.ModRevision, twin.Key, twin.ModRevision)
					}
				}
			}},
		{name: "lease", workload: "lease", requests: 60, args: []string{"--total", "60"},
			check: func(t *testing.T, r *bench.Result) {
				for _, op := range []string{"grant", "keepalive", "revoke"} {
					opCount(t, r, op, 60)
				}
			}},
		{name: "list", workload: "list", requests: 1200, args: []string{"--objects", "1200", "--value-size", "512", "--server-pids", pid},
			check: func(t *testing.T, r *bench.Result) {
				l := r.List
				if l == nil || l.Pages != 3 || l.PaginatedKeys != 1200 || l.RangeKeys != 1200 || l.StreamKeys != 1200 || l.StreamUnsupported != "" {
					t.Fatalf("list %+v", l)
				}
				if l.RSSAfterLoadBytes <= 0 || l.RSSPeakStreamBytes <= 0 {
					t.Errorf("list RSS %+v", l)
				}
				opCount(t, r, "load-put", 1200)
				opCount(t, r, "list-page", 3)
				opCount(t, r, "range-stream", 1)
			}},
		{name: "watch", workload: "watch", requests: 100, args: []string{"--total", "100", "--watchers", "4", "--watch-streams", "2"},
			check: func(t *testing.T, r *bench.Result) {
				// Every watcher sees every put.
				if w := r.Watch; w == nil || w.Watchers != 4 || w.EventsExpected != 400 || w.EventsReceived != w.EventsExpected {
					t.Fatalf("watch %+v", w)
				}
			}},
		{name: "watch-grpc", workload: "watch", requests: 100, args: []string{"--total", "100", "--watchers", "5", "--watch-streams", "2", "--watch-client", "grpc"},
			check: func(t *testing.T, r *bench.Result) {
				// The same through the Watch streams read directly (three
				// watchers on one stream, two on the other).
				if w := r.Watch; w == nil || w.Watchers != 5 || w.EventsExpected != 500 || w.EventsReceived != w.EventsExpected {
					t.Fatalf("watch %+v", w)
				}
				opCount(t, r, "event", 500)
			}},
		{name: "k8s", workload: "k8s", requests: -1, args: []string{"--total", "100", "--k8s-objects", "50"},
			check: func(t *testing.T, r *bench.Result) {
				if w := r.Watch; w == nil || w.EventsExpected <= 0 || w.EventsReceived != w.EventsExpected {
					t.Fatalf("k8s watch %+v", w)
				}
			}},
	})

	// The comparison report reads the results back.
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := bench.Main(append([]string{"report", "--out", out}, files...), &stdout, &stderr); code != bench.ExitOK {
		t.Fatalf("report: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"| put-seq |", "| list |", "| watch |"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, stdout.String())
		}
	}
	for _, f := range []string{"results.md", "throughput-1-node.svg", "latency-1-node.svg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestNullServerCeiling(t *testing.T) {
	s, err := bench.StartNullServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	runAll(t, s.Addr(), bench.TargetNull, []run{
		{name: "put", workload: "put", requests: 500, args: []string{"--total", "500"}},
		{name: "range", workload: "range", requests: 200, args: []string{"--total", "200", "--key-space", "20"}},
		{name: "txn-put", workload: "txn-put", requests: 200, args: []string{"--total", "200"}},
		{name: "lease", workload: "lease", requests: -1, wantUnsupported: "Lease", args: []string{"--total", "1000"},
			check: func(t *testing.T, r *bench.Result) {
				// Each client stops at its first Unimplemented.
				if r.Count != 0 || r.Errors < 1 || r.Errors > int64(r.Params.Clients) {
					t.Errorf("%d ok, %d errors: kept sending after Unimplemented?", r.Count, r.Errors)
				}
			}},
		{name: "watch", workload: "watch", wantUnsupported: "Watch", args: []string{"--total", "10", "--watchers", "2", "--watch-streams", "1"}},
		{name: "watch-grpc", workload: "watch", wantUnsupported: "Watch", args: []string{"--total", "10", "--watchers", "2", "--watch-streams", "1", "--watch-client", "grpc"}},
	})
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"put", "--clients", "0"},
		{"put", "--no-such-flag"},
		{"watch", "--watch-client", "nope"},
		{"report"},
	} {
		var stdout, stderr bytes.Buffer
		if code := bench.Main(args, &stdout, &stderr); code != bench.ExitUsage {
			t.Errorf("tessbench %q: exit %d, want %d", args, code, bench.ExitUsage)
		}
		if stderr.Len() == 0 {
			t.Errorf("tessbench %q: no message", args)
		}
	}
}
