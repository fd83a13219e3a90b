package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Targets that the comparison report knows by name; others are reported
// too, after these.
const (
	TargetEtcd    = "etcd"
	TargetTessera = "tessera"
	TargetNull    = "null"
)

// Comparison is a set of results to report side by side.
type Comparison struct {
	Results []*Result
	// ServerCost adds a table of server CPU-seconds per 10k operations
	// beside throughput, with the Tessera ÷ etcd ratio (tessbench report
	// --server-cost; compare.sh --pin).
	ServerCost bool
}

// ReadResults reads result files written by tessbench --json.
func ReadResults(paths []string) (*Comparison, error) {
	if len(paths) == 0 {
		return nil, errNoResults
	}
	c := &Comparison{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r Result
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		c.Results = append(c.Results, &r)
	}
	return c, nil
}

// topologies and cases in the order they first appear.
func (c *Comparison) topologies() []string {
	var out []string
	for _, r := range c.Results {
		if !slices.Contains(out, r.Topology) {
			out = append(out, r.Topology)
		}
	}
	return out
}

func (c *Comparison) cases(topology string) []string {
	var out []string
	for _, r := range c.Results {
		if r.Topology == topology && !slices.Contains(out, r.Case) {
			out = append(out, r.Case)
		}
	}
	return out
}

// find returns the last result for a cell.
func (c *Comparison) find(topology, caseName, target string) *Result {
	var found *Result
	for _, r := range c.Results {
		if r.Topology == topology && r.Case == caseName && r.Target == target {
			found = r
		}
	}
	return found
}

// measured reports whether r is a measurement (present and supported).
func measured(r *Result) bool { return r != nil && r.Unsupported == "" && r.Count > 0 }

func fmtRate(r *Result) string {
	switch {
	case r == nil:
		return "—"
	case r.Unsupported != "":
		return "not supported"
	}
	return fmt.Sprintf("%.0f", r.Throughput)
}

func fmtLatency(r *Result) string {
	if !measured(r) {
		return "—"
	}
	return fmt.Sprintf("%.2f / %.2f / %.2f", r.Latency.P50, r.Latency.P99, r.Latency.P999)
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// WriteMarkdown writes the comparison tables.
func (c *Comparison) WriteMarkdown(w io.Writer) {
	for _, topo := range c.topologies() {
		fmt.Fprintf(w, "### %s\n\n", topo)
		fmt.Fprintln(w, "| workload | etcd ops/s | Tessera ops/s | Tessera ÷ etcd | etcd p50 / p99 / p99.9 ms | Tessera p50 / p99 / p99.9 ms | p99 Tessera ÷ etcd | ceiling ops/s (empty handlers) | notes |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
		for _, cs := range c.cases(topo) {
			etcd, tess, null := c.find(topo, cs, TargetEtcd), c.find(topo, cs, TargetTessera), c.find(topo, cs, TargetNull)
			var notes []string
			for _, r := range []*Result{etcd, tess} {
				if r == nil {
					continue
				}
				if r.Unsupported != "" {
					notes = append(notes, fmt.Sprintf("%s: not supported by target: %s", r.Target, r.Unsupported))
				}
				if r.Errors > 0 {
					notes = append(notes, fmt.Sprintf("%s: %d errors", r.Target, r.Errors))
				}
				if r.Watch != nil && measured(r) && r.Watch.EventsReceived < r.Watch.EventsExpected {
					notes = append(notes, fmt.Sprintf("%s: %d of %d events", r.Target, r.Watch.EventsReceived, r.Watch.EventsExpected))
				}
			}
			var ratioTput, ratioP99 string = "—", "—"
			if measured(etcd) && measured(tess) {
				ratioTput = ratio(tess.Throughput, etcd.Throughput)
				ratioP99 = ratio(tess.Latency.P99, etcd.Latency.P99)
			}
			ceiling := "—"
			if measured(null) {
				ceiling = fmt.Sprintf("%.0f", null.Throughput)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", cs, fmtRate(etcd), fmtRate(tess), ratioTput,
				fmtLatency(etcd), fmtLatency(tess), ratioP99, ceiling, strings.Join(notes, "; "))
		}
		fmt.Fprintln(w)
	}
	if c.ServerCost {
		c.writeServerCostTable(w)
	}
	c.writeServerTable(w)
	c.writeListTable(w)
}

func (c *Comparison) writeServerTable(w io.Writer) {
	var rows []*Result
	for _, r := range c.Results {
		if r.Server != nil && r.Target != TargetNull && measured(r) {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "### Server CPU and memory (from /proc, summed over the cluster's processes)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| topology | workload | target | requests | CPU-s per 10k requests | RSS before | RSS after | RSS peak |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		s := r.Server
		fmt.Fprintf(w, "| %s | %s | %s | %d | %.2f | %s | %s | %s |\n", r.Topology, r.Case, r.Target, r.Count,
			s.CPUSecondsPer10kRequests, formatBytes(s.RSSStartBytes), formatBytes(s.RSSEndBytes), formatBytes(s.RSSPeakBytes))
	}
	fmt.Fprintln(w)
}

// cpuPer10k is a result's server CPU-seconds per 10k requests, or 0 when
// it has none.
func cpuPer10k(r *Result) float64 {
	if !measured(r) || r.Server == nil {
		return 0
	}
	return r.Server.CPUSecondsPer10kRequests
}

func fmtCPUPer10k(r *Result) string {
	if cpuPer10k(r) <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.3f", cpuPer10k(r))
}

// writeServerCostTable sets each case's server CPU per 10k operations (summed
// over the topology's server processes) beside its throughput.
func (c *Comparison) writeServerCostTable(w io.Writer) {
	fmt.Fprintln(w, "### Server CPU per 10k operations (summed over the topology's server processes)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| topology | workload | etcd ops/s | Tessera ops/s | etcd CPU-s / 10k ops | Tessera CPU-s / 10k ops | CPU Tessera ÷ etcd |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, topo := range c.topologies() {
		for _, cs := range c.cases(topo) {
			etcd, tess := c.find(topo, cs, TargetEtcd), c.find(topo, cs, TargetTessera)
			if etcd == nil && tess == nil {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", topo, cs, fmtRate(etcd), fmtRate(tess),
				fmtCPUPer10k(etcd), fmtCPUPer10k(tess), ratio(cpuPer10k(tess), cpuPer10k(etcd)))
		}
	}
	fmt.Fprintln(w)
}

func (c *Comparison) writeListTable(w io.Writer) {
	var rows []*Result
	for _, r := range c.Results {
		if r.List != nil {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "### Large lists")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| topology | target | objects × size | paginated list | one RangeStream | one Range | watch catch-up | RSS after load | RSS peak: paginated / RangeStream (start → peak) / Range |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		l := r.List
		stream := fmt.Sprintf("%.2f s", l.StreamSeconds)
		if l.StreamUnsupported != "" {
			stream = "not supported"
		}
		fmt.Fprintf(w, "| %s | %s | %d × %d B | %.2f s (%d pages) | %s | %.2f s | %.2f s | %s | %s / %s → %s / %s |\n", r.Topology, r.Target,
			l.Objects, l.ObjectSizeBytes, l.PaginatedSeconds, l.Pages, stream, l.RangeSeconds, l.CatchUpSeconds, formatBytes(l.RSSAfterLoadBytes),
			formatBytes(l.RSSPeakPagedBytes), formatBytes(l.RSSBeforeStreamBytes), formatBytes(l.RSSPeakStreamBytes), formatBytes(l.RSSPeakRangeBytes))
	}
	fmt.Fprintln(w)
}

// targetOrder lists the targets in the results, known ones first.
func (c *Comparison) targetOrder() []string {
	out := []string{}
	for _, t := range []string{TargetEtcd, TargetTessera, TargetNull} {
		for _, r := range c.Results {
			if r.Target == t {
				out = append(out, t)
				break
			}
		}
	}
	for _, r := range c.Results {
		if !slices.Contains(out, r.Target) {
			out = append(out, r.Target)
		}
	}
	return out
}

// WritePlots writes, per topology, throughput-<topology>.svg and
// latency-<topology>.svg into dir and returns their names.
func (c *Comparison) WritePlots(dir string) ([]string, error) {
	var names []string
	targets := c.targetOrder()
	for _, topo := range c.topologies() {
		var tput, lat []barGroup
		for _, cs := range c.cases(topo) {
			tg := barGroup{label: cs}
			lg := barGroup{label: cs}
			for ti, t := range targets {
				r := c.find(topo, cs, t)
				if !measured(r) {
					continue
				}
				tg.bars = append(tg.bars, bar{label: t, value: r.Throughput, color: ti})
				lg.bars = append(lg.bars,
					bar{label: t + " p50", value: r.Latency.P50, color: ti},
					bar{label: t + " p99", value: r.Latency.P99, color: ti},
					bar{label: t + " p99.9", value: r.Latency.P999, color: ti})
			}
			if len(tg.bars) > 0 {
				tput = append(tput, tg)
				lat = append(lat, lg)
			}
		}
		slug := strings.NewReplacer(" ", "-", "/", "-").Replace(topo)
		for _, p := range []struct {
			name, title, unit string
			groups            []barGroup
		}{
			{"throughput-" + slug + ".svg", "Throughput, " + topo, "requests/s", tput},
			{"latency-" + slug + ".svg", "Latency percentiles, " + topo, "ms", lat},
		} {
			f, err := os.Create(filepath.Join(dir, p.name))
			if err != nil {
				return names, err
			}
			writeBarChart(f, p.title, p.unit, p.groups)
			if err := f.Close(); err != nil {
				return names, err
			}
			names = append(names, p.name)
		}
	}
	return names, nil
}

func reportMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tessbench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write results.md and the SVG plots into (default: only print the tables)")
	serverCost := fs.Bool("server-cost", false, "add a table of server CPU-seconds per 10k operations (from --server-pids) beside throughput, with the Tessera ÷ etcd ratio")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	c, err := ReadResults(fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "tessbench report: %v\n", err)
		return ExitUsage
	}
	c.ServerCost = *serverCost
	c.WriteMarkdown(stdout)
	if *out == "" {
		return ExitOK
	}
	f, err := os.Create(filepath.Join(*out, "results.md"))
	if err == nil {
		c.WriteMarkdown(f)
		err = f.Close()
	}
	if err == nil {
		var plots []string
		plots, err = c.WritePlots(*out)
		for _, p := range plots {
			fmt.Fprintf(stderr, "wrote %s\n", filepath.Join(*out, p))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "tessbench report: %v\n", err)
		return ExitFailed
	}
	return ExitOK
}
