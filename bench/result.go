package bench

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Result is one workload run, as printed by --json. Every field is always
// present (zero when it does not apply) except the workload-specific
// sections, which are present exactly for their workload.
type Result struct {
	Workload string `json:"workload"`
	// Case names this run in a comparison ("range-serializable"); defaults
	// to the workload.
	Case string `json:"case"`
	// Target and Topology label the server under test ("etcd", "1-node").
	Target   string `json:"target"`
	Topology string `json:"topology"`
	Params   Config `json:"params"`
	Started  string `json:"started"`
	// Count is the requests that completed without error (for txn-put and
	// k8s, CAS conflicts included), Errors those that failed; Count+Errors is
	// every request sent.
	Count        int64            `json:"count"`
	Errors       int64            `json:"errors"`
	ErrorSamples map[string]int64 `json:"error_samples"`
	// Conflicts counts compare-and-swap Txns whose compare failed.
	Conflicts int64 `json:"conflicts"`
	// Unsupported is set when the target answered Unimplemented for an RPC
	// the workload needs ("Watch: unknown service etcdserverpb.Watch"); the
	// numbers are then not a measurement.
	Unsupported     string               `json:"unsupported"`
	DurationSeconds float64              `json:"duration_seconds"`
	Throughput      float64              `json:"throughput_per_second"`
	Latency         LatencyMs            `json:"latency_ms"`
	Operations      map[string]*OpResult `json:"operations"`
	Server          *ServerStats         `json:"server"`

	Watch *WatchResult `json:"watch,omitempty"`
	List  *ListResult  `json:"list,omitempty"`
}

// OpResult is one kind of request within a workload (k8s: "create",
// "list-page", …; lease: "grant", "keepalive", "revoke").
type OpResult struct {
	Count   int64     `json:"count"`
	Errors  int64     `json:"errors"`
	Latency LatencyMs `json:"latency_ms"`
}

// WatchResult is the watch and k8s workloads' event accounting.
type WatchResult struct {
	Watchers int `json:"watchers"`
	Streams  int `json:"streams"`
	// EventsExpected is what the watchers should see for the writes that
	// succeeded; EventsReceived what they saw before the run ended.
	EventsExpected int64 `json:"events_expected"`
	EventsReceived int64 `json:"events_received"`
	// EarlyEvents arrived before the response to their Put; their latency
	// is recorded as zero.
	EarlyEvents int64 `json:"early_events"`
}

// ListResult is the list workload's measurements.
type ListResult struct {
	Objects         int64   `json:"objects"`
	ObjectSizeBytes int     `json:"object_size_bytes"`
	LoadSeconds     float64 `json:"load_seconds"`
	// The paginated list reads pages of PageLimit at the revision of the
	// first page, as kube-apiserver does.
	PaginatedSeconds float64 `json:"paginated_seconds"`
	Pages            int64   `json:"pages"`
	PaginatedKeys    int64   `json:"paginated_keys"`
	RangeSeconds     float64 `json:"range_seconds"`
	RangeKeys        int64   `json:"range_keys"`
	StreamSeconds    float64 `json:"stream_seconds"`
	StreamKeys       int64   `json:"stream_keys"`
	StreamChunks     int64   `json:"stream_chunks"`
	// StreamUnsupported is set when the target has no RangeStream.
	StreamUnsupported string `json:"stream_unsupported"`
	// A watch of the prefix from the load's first revision, timed until it
	// has delivered an event per object (catching up from history).
	CatchUpSeconds float64 `json:"catch_up_seconds"`
	CatchUpEvents  int64   `json:"catch_up_events"`
	// Server RSS (sum over --server-pids; 0 without them): after the load,
	// when the RangeStream starts (it runs after the paginated list), and
	// the peak while serving each list.
	RSSAfterLoadBytes    int64 `json:"rss_after_load_bytes"`
	RSSBeforeStreamBytes int64 `json:"rss_before_stream_bytes"`
	RSSPeakPagedBytes    int64 `json:"rss_peak_paginated_bytes"`
	RSSPeakRangeBytes    int64 `json:"rss_peak_range_bytes"`
	RSSPeakStreamBytes   int64 `json:"rss_peak_stream_bytes"`
}

// WriteSummary prints the human summary.
func (r *Result) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "%s", r.Workload)
	if r.Case != r.Workload {
		fmt.Fprintf(w, " (%s)", r.Case)
	}
	if r.Target != "" || r.Topology != "" {
		fmt.Fprintf(w, " against %s %s", r.Target, r.Topology)
	}
	fmt.Fprintf(w, " [%s]\n", strings.Join(r.Params.Endpoints, ","))
	if r.Unsupported != "" {
		fmt.Fprintf(w, "  not supported by target: %s\n", r.Unsupported)
		return
	}
	fmt.Fprintf(w, "  %d clients over %d connections", r.Params.Clients, r.Params.Conns)
	if r.Params.RatePerSecond > 0 {
		fmt.Fprintf(w, ", rate limit %.0f/s", r.Params.RatePerSecond)
	}
	fmt.Fprintf(w, "\n  requests: %d ok, %d errors", r.Count, r.Errors)
	if r.Conflicts > 0 {
		fmt.Fprintf(w, " (%d CAS conflicts among the ok)", r.Conflicts)
	}
	fmt.Fprintf(w, " in %.2fs = %.0f/s\n", r.DurationSeconds, r.Throughput)
	writeLatency(w, "  latency", r.Latency)
	for _, name := range sortedKeys(r.Operations) {
		op := r.Operations[name]
		writeLatency(w, fmt.Sprintf("  %-12s %7d ok %5d err", name, op.Count, op.Errors), op.Latency)
	}
	if r.Watch != nil {
		fmt.Fprintf(w, "  watch: %d watchers over %d streams, events %d of %d expected (%d before their Put's response)\n",
			r.Watch.Watchers, r.Watch.Streams, r.Watch.EventsReceived, r.Watch.EventsExpected, r.Watch.EarlyEvents)
	}
	if l := r.List; l != nil {
		fmt.Fprintf(w, "  list of %d objects of %d bytes (loaded in %.1fs):\n", l.Objects, l.ObjectSizeBytes, l.LoadSeconds)
		fmt.Fprintf(w, "    paginated (%d pages): %.3fs, %d keys, server RSS peak %s\n", l.Pages, l.PaginatedSeconds, l.PaginatedKeys, formatBytes(l.RSSPeakPagedBytes))
		fmt.Fprintf(w, "    one Range:            %.3fs, %d keys, server RSS peak %s\n", l.RangeSeconds, l.RangeKeys, formatBytes(l.RSSPeakRangeBytes))
		if l.StreamUnsupported != "" {
			fmt.Fprintf(w, "    one RangeStream:      not supported by target: %s\n", l.StreamUnsupported)
		} else {
			fmt.Fprintf(w, "    one RangeStream:      %.3fs, %d keys in %d chunks, server RSS %s at its start, peak %s\n", l.StreamSeconds, l.StreamKeys, l.StreamChunks, formatBytes(l.RSSBeforeStreamBytes), formatBytes(l.RSSPeakStreamBytes))
		}
		fmt.Fprintf(w, "    server RSS after load: %s\n", formatBytes(l.RSSAfterLoadBytes))
	}
	if s := r.Server; s != nil {
		fmt.Fprintf(w, "  server %v: %.2f CPU-s (%.3f per 10k requests), RSS %s at end, peak %s\n",
			s.PIDs, s.CPUSeconds, s.CPUSecondsPer10kRequests, formatBytes(s.RSSEndBytes), formatBytes(s.RSSPeakBytes))
	}
	for _, msg := range sortedKeys(r.ErrorSamples) {
		fmt.Fprintf(w, "  error x%d: %s\n", r.ErrorSamples[msg], msg)
	}
}

func writeLatency(w io.Writer, label string, l LatencyMs) {
	fmt.Fprintf(w, "%s ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", label, l.P50, l.P90, l.P99, l.P999, l.Max)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func formatBytes(n int64) string {
	switch {
	case n == 0:
		return "n/a"
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	default:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
}
