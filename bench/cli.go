package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/tesserakv/tessera/internal/clientflags"
)

// Exit codes of tessbench.
const (
	ExitOK          = 0
	ExitFailed      = 1 // the run could not be done (connection, preload, …)
	ExitUsage       = 2
	ExitUnsupported = 3 // the target lacks an RPC the workload needs
)

const usageText = `tessbench: load generator for etcd-v3-API servers (Tessera, etcd).

Usage:
  tessbench WORKLOAD [flags]        run a workload (%s)
  tessbench null-server [--listen ADDR]
                                    serve etcd KV with empty handlers (the ceiling)
  tessbench report [--out DIR] [--server-cost] RESULT.json...
                                    Markdown comparison table and SVG plots

Prints a human summary, or with --json one JSON object. Exit status: 0 ok,
1 the run failed, 2 bad usage, 3 the target does not support the workload.

Flags of WORKLOAD:
`

// Main is tessbench's command line.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fs, _, _ := workloadFlags(stderr)
		fmt.Fprintf(stderr, usageText, strings.Join(Workloads(), ", "))
		fs.PrintDefaults()
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "null-server":
		return nullServerMain(ctx, args[1:], stdout, stderr)
	case "report":
		return reportMain(args[1:], stdout, stderr)
	}
	workload := args[0]
	if _, ok := workloads[workload]; !ok {
		fmt.Fprintf(stderr, "tessbench: unknown workload %q; have %s, null-server, report\n", workload, strings.Join(Workloads(), ", "))
		return ExitUsage
	}
	fs, cfg, asJSON := workloadFlags(stderr)
	var tlsFlags clientflags.TLS
	tlsFlags.Register(fs)
	user := fs.String("user", "", "username[:password] for authentication")
	password := fs.String("password", "", "password for authentication (if this option is used, --user option shouldn't include password)")
	if err := fs.Parse(args[1:]); err != nil {
		return ExitUsage
	}
	var err error
	if cfg.TLS, err = tlsFlags.Config(strings.Join(cfg.Endpoints, ",")); err == nil {
		cfg.User, cfg.Password, err = clientflags.ParseUser(*user, *password)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tessbench: %v\n", err)
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tessbench: unexpected arguments %q\n", fs.Args())
		return ExitUsage
	}
	if err := cfg.Validate(workload); err != nil {
		fmt.Fprintf(stderr, "tessbench %s: %v\n", workload, err)
		return ExitUsage
	}
	var progress io.Writer
	if isTerminal(stdout) {
		progress = stderr
	}
	res, err := Run(ctx, workload, *cfg, progress)
	if err != nil {
		fmt.Fprintf(stderr, "tessbench: %v\n", err)
		return ExitFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "tessbench: %v\n", err)
			return ExitFailed
		}
	} else {
		res.WriteSummary(stdout)
	}
	if res.Unsupported != "" {
		fmt.Fprintf(stderr, "tessbench %s: not supported by target: %s\n", workload, res.Unsupported)
		return ExitUnsupported
	}
	return ExitOK
}

// workloadFlags defines the workload flags over a default config.
func workloadFlags(stderr io.Writer) (*flag.FlagSet, *Config, *bool) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("tessbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(listFlag{&cfg.Endpoints}, "endpoints", "comma-separated client endpoints (host:port or http://host:port)")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients, one request in flight each")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "gRPC connections the clients share")
	fs.Int64Var(&cfg.Total, "total", cfg.Total, "requests to send (list: see --objects)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "send requests for this long instead of --total")
	fs.Float64Var(&cfg.RatePerSecond, "rate", 0, "requests per second over all clients (0 = as fast as possible)")
	fs.IntVar(&cfg.KeySizeBytes, "key-size", cfg.KeySizeBytes, "key size in bytes")
	fs.IntVar(&cfg.ValueSizeBytes, "value-size", cfg.ValueSizeBytes, "value size in bytes")
	fs.Int64Var(&cfg.KeySpace, "key-space", cfg.KeySpace, "distinct keys (0 with --sequential-keys: a new key per request)")
	fs.BoolVar(&cfg.SequentialKeys, "sequential-keys", false, "keys in order instead of random")
	fs.BoolVar(&cfg.RangePrefix, "prefix", false, "range: read the whole key space (up to --limit) instead of one key")
	fs.Int64Var(&cfg.RangeLimit, "limit", 0, "range --prefix: at most this many keys (0 = all)")
	fs.StringVar(&cfg.Consistency, "consistency", cfg.Consistency, `range: "l" linearizable or "s" serializable`)
	fs.IntVar(&cfg.Watchers, "watchers", cfg.Watchers, "watch: watchers of the written prefix")
	fs.IntVar(&cfg.WatchStreams, "watch-streams", cfg.WatchStreams, "watch: gRPC watch streams the watchers share")
	fs.StringVar(&cfg.WatchClient, "watch-client", cfg.WatchClient, `watch: "clientv3" (the etcd client's Watch) or "grpc" (the Watch streams read directly)`)
	fs.Int64Var(&cfg.LeaseTTLSeconds, "lease-ttl", cfg.LeaseTTLSeconds, "lease, k8s: TTL of granted leases in seconds")
	fs.Int64Var(&cfg.Objects, "objects", cfg.Objects, "list: objects (of --value-size) to load and list")
	fs.Int64Var(&cfg.PageLimit, "page-limit", cfg.PageLimit, "list, k8s: keys per page of a paginated list")
	fs.IntVar(&cfg.K8sNamespaces, "k8s-namespaces", cfg.K8sNamespaces, "k8s: namespaces")
	fs.IntVar(&cfg.K8sObjects, "k8s-objects", cfg.K8sObjects, "k8s: objects created before the run and then updated, read, listed, deleted")
	fs.IntVar(&cfg.K8sObjectMinBytes, "k8s-object-min", cfg.K8sObjectMinBytes, "k8s: smallest object in bytes")
	fs.IntVar(&cfg.K8sObjectMaxBytes, "k8s-object-max", cfg.K8sObjectMaxBytes, "k8s: largest object in bytes")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed")
	fs.Var(pidsFlag{&cfg.ServerPIDs}, "server-pids", "comma-separated PIDs of the server processes: report their CPU time and RSS from /proc")
	fs.StringVar(&cfg.Case, "case", "", "name of this run in a comparison (default: the workload)")
	fs.StringVar(&cfg.Target, "target", "", `label of the server under test ("etcd", "tessera")`)
	fs.StringVar(&cfg.Topology, "topology", "", `label of the topology ("1-node")`)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return fs, &cfg, asJSON
}

type listFlag struct{ list *[]string }

func (f listFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f listFlag) Set(s string) error {
	*f.list = nil
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*f.list = append(*f.list, part)
		}
	}
	return nil
}

type pidsFlag struct{ pids *[]int }

func (f pidsFlag) String() string {
	if f.pids == nil {
		return ""
	}
	parts := make([]string, len(*f.pids))
	for i, p := range *f.pids {
		parts[i] = strconv.Itoa(p)
	}
	return strings.Join(parts, ",")
}

func (f pidsFlag) Set(s string) error {
	*f.pids = nil
	for part := range strings.SplitSeq(s, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || pid < 1 {
			return fmt.Errorf("not a PID: %q", part)
		}
		*f.pids = append(*f.pids, pid)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func nullServerMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tessbench null-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:2379", "address to serve etcd's KV service on")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	s, err := StartNullServer(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "tessbench null-server: %v\n", err)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "null-server: etcd KV with empty handlers on %s\n", s.Addr())
	<-ctx.Done()
	s.Stop()
	return ExitOK
}

var errNoResults = errors.New("no result files given")
