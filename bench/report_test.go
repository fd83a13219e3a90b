package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHistogramSummary(t *testing.T) {
	h := NewHistogram()
	if (h.Summary() != LatencyMs{}) {
		t.Fatal("empty histogram has nonzero summary")
	}
	// 1..1000 ms, one each.
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	other := NewHistogram()
	other.Record(2 * time.Hour) // beyond the range: recorded as the maximum
	h.Merge(other)
	s := h.Summary()
	near := func(name string, got, want float64) {
		t.Helper()
		if got < want*0.99 || got > want*1.01 {
			t.Errorf("%s = %v, want ≈ %v", name, got, want)
		}
	}
	near("p50", s.P50, 500)
	near("p90", s.P90, 900)
	near("p99", s.P99, 990)
	near("p99.9", s.P999, 1000)
	near("max", s.Max, float64(time.Minute/time.Millisecond))
	if h.Count() != 1001 {
		t.Fatalf("count %d", h.Count())
	}
}

func TestRecorderCountsAndErrors(t *testing.T) {
	r := newRecorder()
	r.request(outcome{}, time.Millisecond)
	r.request(outcome{op: "update", conflict: true}, time.Millisecond)
	r.request(outcome{op: "update", err: io.EOF}, time.Millisecond)
	r.observe("grant", time.Millisecond, nil)
	other := newRecorder()
	other.request(outcome{err: io.EOF}, time.Millisecond)
	r.merge(&other)
	res := &Result{}
	r.fill(res, 2*time.Second)
	if res.Count != 2 || res.Errors != 2 || res.Conflicts != 1 {
		t.Fatalf("count %d errors %d conflicts %d, want 2 2 1", res.Count, res.Errors, res.Conflicts)
	}
	if res.Throughput != 1 || res.ErrorSamples["EOF"] != 2 {
		t.Fatalf("throughput %v, errors %v", res.Throughput, res.ErrorSamples)
	}
	if u := res.Operations["update"]; u.Count != 1 || u.Errors != 1 || res.Operations["grant"].Count != 1 {
		t.Fatalf("operations %+v", res.Operations)
	}
}

func TestTopErrors(t *testing.T) {
	got := topErrors(map[string]int64{"a": 1, "b": 5, "c": 3, "d": 3}, 2)
	if len(got) != 2 || got["b"] != 5 || got["c"] != 3 {
		t.Fatalf("top errors %v, want b:5 c:3", got)
	}
}

// resultKeys are the fields every JSON result carries.
var resultKeys = []string{"workload", "case", "target", "topology", "params", "started", "count", "errors",
	"error_samples", "conflicts", "unsupported", "duration_seconds", "throughput_per_second", "latency_ms",
	"operations", "server"}

var latencyKeys = []string{"mean", "p50", "p90", "p99", "p99_9", "max"}

// checkResultJSON checks that data is a complete result and returns it decoded.
func checkResultJSON(t testing.TB, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, data)
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
	params, _ := m["params"].(map[string]any)
	for _, k := range []string{"endpoints", "clients", "conns", "total", "duration_seconds", "rate", "key_size", "value_size", "key_space"} {
		if _, ok := params[k]; !ok {
			t.Errorf("params lack %q", k)
		}
	}
	return m
}

func TestResultJSONIsComplete(t *testing.T) {
	r := newRecorder()
	r.request(outcome{}, 3*time.Millisecond)
	res := &Result{Workload: "put", Case: "put", Params: DefaultConfig()}
	r.fill(res, time.Second)
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	checkResultJSON(t, data)
	if bytes.Contains(data, []byte(`"watch"`)) || bytes.Contains(data, []byte(`"list"`)) {
		t.Errorf("put result carries another workload's section: %s", data)
	}
}

func TestWriteSummary(t *testing.T) {
	res := &Result{Workload: "txn-put", Case: "txn-put", Params: DefaultConfig(), Count: 10, Conflicts: 2,
		Operations: map[string]*OpResult{"grant": {Count: 3}}, ErrorSamples: map[string]int64{"Unavailable: x": 1}, Errors: 1}
	var b strings.Builder
	res.WriteSummary(&b)
	for _, want := range []string{"txn-put", "10 ok, 1 errors", "2 CAS conflicts", "p99.9", "grant", "error x1: Unavailable: x"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	(&Result{Workload: "watch", Case: "watch", Unsupported: "Watch: not implemented"}).WriteSummary(&b)
	if !strings.Contains(b.String(), "not supported by target: Watch: not implemented") || strings.Contains(b.String(), "latency") {
		t.Errorf("unsupported summary:\n%s", b.String())
	}
}

func TestProcParsing(t *testing.T) {
	stat := []byte("1234 (tess (er) a) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 1000 2000\n")
	cpu, err := parseStatCPUSeconds(stat)
	if err != nil || cpu != 3 {
		t.Fatalf("cpu %v %v, want 3 s", cpu, err)
	}
	rss, err := parseStatusRSSBytes([]byte("Name:\ttessera\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n"))
	if err != nil || rss != 8<<20 {
		t.Fatalf("rss %v %v, want 8 MiB", rss, err)
	}
	// Our own process: the sampler works on a live PID.
	s, err := startProcSampler([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.finish(10000)
	if err != nil || st.RSSEndBytes <= 0 || st.RSSPeakBytes < st.RSSEndBytes || st.CPUSecondsPer10kRequests != st.CPUSeconds {
		t.Fatalf("stats %+v, %v", st, err)
	}
}

func TestProgressLine(t *testing.T) {
	line := progressLine("put", 50, 100, time.Second, 0)
	if !strings.Contains(line, " 50%") || !strings.Contains(line, "50 req 50/s") || !strings.Contains(line, "[===============               ]") {
		t.Fatalf("progress line %q", line)
	}
	if line := progressLine("put", 10, 0, 30*time.Second, 10*time.Second); !strings.Contains(line, "100%") {
		t.Fatalf("progress past the duration: %q", line)
	}
}

func TestValidateNamesFlags(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Clients, cfg.Conns, cfg.Consistency, cfg.KeySizeBytes = 4, 8, "x", 3
	err := cfg.Validate("put")
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, flag := range []string{"--conns", "--consistency", "--key-size"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("error does not name %s: %v", flag, err)
		}
	}
	cfg = DefaultConfig()
	cfg.Duration = time.Second
	if err := cfg.Validate("put"); err != nil || cfg.Total != 0 || cfg.DurationSeconds != 1 {
		t.Fatalf("duration config: %v, total %d", err, cfg.Total)
	}
}

func TestComparisonReport(t *testing.T) {
	mk := func(target, topo, cs string, tput, p99 float64) *Result {
		return &Result{Workload: cs, Case: cs, Target: target, Topology: topo, Count: 100, Throughput: tput,
			Latency: LatencyMs{P50: p99 / 2, P99: p99, P999: p99 * 1.5}}
	}
	unsupported := mk(TargetTessera, "1-node", "watch", 0, 0)
	unsupported.Unsupported, unsupported.Count = "Watch: unimplemented", 0
	withServer := mk(TargetTessera, "1-node", "put", 20000, 10)
	withServer.Server = &ServerStats{CPUSecondsPer10kRequests: 0.61, RSSEndBytes: 80 << 20}
	c := &Comparison{Results: []*Result{
		mk(TargetEtcd, "1-node", "put", 10000, 20), withServer, mk(TargetNull, "1-node", "put", 40000, 3),
		mk(TargetEtcd, "1-node", "watch", 5000, 50), unsupported,
		mk(TargetEtcd, "3-node", "put", 7000, 30), mk(TargetTessera, "3-node", "put", 14000, 15),
	}}
	var b strings.Builder
	c.WriteMarkdown(&b)
	md := b.String()
	for _, want := range []string{
		"### 1-node", "### 3-node",
		"| put | 10000 | 20000 | 2.00× | 10.00 / 20.00 / 30.00 | 5.00 / 10.00 / 15.00 | 0.50× | 40000 |",
		"| watch | 5000 | not supported | — |",
		"tessera: not supported by target: Watch: unimplemented",
		"| 1-node | put | tessera | 100 | 0.61 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "Server CPU per 10k operations") {
		t.Errorf("server cost table without ServerCost:\n%s", md)
	}
	withServer.Server.CPUSecondsPer10kRequests = 0.6
	etcdPut := c.Results[0]
	etcdPut.Server = &ServerStats{CPUSecondsPer10kRequests: 0.8}
	c.ServerCost = true
	b.Reset()
	c.WriteMarkdown(&b)
	md = b.String()
	for _, want := range []string{
		"| 1-node | put | 10000 | 20000 | 0.800 | 0.600 | 0.75× |",
		"| 1-node | watch | 5000 | not supported | — | — | — |",
		"| 3-node | put | 7000 | 14000 | — | — | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("server cost report lacks %q:\n%s", want, md)
		}
	}
	dir := t.TempDir()
	names, err := c.WritePlots(dir)
	if err != nil || len(names) != 4 {
		t.Fatalf("plots %v, %v", names, err)
	}
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(bytes.NewReader(data))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s is not well-formed XML: %v", n, err)
			}
		}
	}
}

func TestEventLatencies(t *testing.T) {
	t0 := time.Unix(1000, 0)
	puts := map[int64]time.Time{10: t0, 11: t0.Add(time.Millisecond)}
	w1 := &watcher{arrivals: []eventArrival{{10, t0.Add(2 * time.Millisecond)}, {11, t0}, {99, t0}}}
	w2 := &watcher{arrivals: []eventArrival{{10, t0.Add(4 * time.Millisecond)}}}
	hist, matched, early := eventLatencies(puts, []*watcher{w1, w2})
	if matched != 3 || early != 1 || hist.Count() != 3 {
		t.Fatalf("matched %d early %d count %d, want 3 1 3", matched, early, hist.Count())
	}
	if s := hist.Summary(); s.Max < 3.99 || s.Max > 4.01 {
		t.Fatalf("max %v ms, want 4", s.Max)
	}
}
