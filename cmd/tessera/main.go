// Command tessera runs a Tessera node: an etcd-v3-API key-value store.
//
// With no flags it is a single node serving clients on 127.0.0.1:2379 with its
// data in ./tessera.data, so plain etcdctl works against it. Flags follow etcd's
// names where etcd has them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"syscall"
	"time"

	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/internal/tlsutil"
	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "ctl" {
		os.Exit(runCtl(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := parseFlags(os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tessera: %v\n", err)
		os.Exit(2)
	}
	if installCrashPoints != nil {
		installCrashPoints(&cfg)
	}
	stopTuning := tuneGC()
	srv, err := server.Start(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tessera: %v\n", err)
		os.Exit(1)
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	sig := <-sigc
	cfg.Logger.Info("shutting down", "signal", sig.String())
	srv.Close()
	stopTuning()
}

// installCrashPoints is set only in binaries built with the crashpoints tag
// (crashpoints.go), for tests that kill a node at a chosen step.
var installCrashPoints func(*node.Config)

// The Go collector lets the heap grow to twice the live heap by default
// (GOGC=100). A node's live Go heap is mostly small (Pebble keeps its block
// cache and memtables outside it) while every request allocates in gRPC and
// protobuf, so collections are frequent. Unless GOGC is set, tuneGC lets the
// heap grow by up to gcExtraHeadroom more than Go's default would, at most
// doubling the default's headroom (GOGC=200); a flat 200 would cost a node
// with a large live heap as much again (docs/performance.md, "The Go
// collector").
const (
	gcExtraHeadroom  = 32 << 20
	gcMaxPercent     = 200
	gcRetuneInterval = time.Second
)

// gcPercentFor is the collector's target for a live heap of live bytes.
func gcPercentFor(live uint64) int {
	if live == 0 {
		return gcMaxPercent
	}
	return 100 + int(min(gcExtraHeadroom*100/live, gcMaxPercent-100))
}

// tuneGC sets the collector's target from the live heap now and every
// gcRetuneInterval, unless GOGC is set in the environment (an empty GOGC is
// Go's default, as for the runtime). stopTuning, called once, ends the
// retuning and waits for it.
func tuneGC() (stopTuning func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	retune := func() {
		metrics.Read(live)
		if live[0].Value.Kind() == metrics.KindUint64 {
			debug.SetGCPercent(gcPercentFor(live[0].Value.Uint64()))
		}
	}
	retune()
	stopper := stop.New()
	_ = stopper.Every(gcRetuneInterval, func(time.Time) { retune() })
	return stopper.Stop
}

// parseFlags turns the command line into a validated node.Config. Help and
// version go to stdout, flag errors to stderr.
func parseFlags(args []string, stdout, stderr io.Writer) (node.Config, error) {
	cfg := node.DefaultConfig()
	fs := flag.NewFlagSet("tessera", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := stdout
	for _, a := range args {
		if a == "--help" || a == "-help" || a == "-h" || a == "--h" {
			fs.SetOutput(stdout)
		}
	}
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: tessera [flags]\n       tessera ctl [flags] COMMAND (tessera ctl --help)\n\nRuns a Tessera node, an etcd-v3-API key-value store. With no flags: one node,\nclients on %s, data in ./%s.\n\nFlags:\n", node.DefaultClientURL, node.DefaultDataDir)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Name, "name", cfg.Name, "human-readable name of this member; must appear in --initial-cluster")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "path to the data directory")
	listenClient := fs.String("listen-client-urls", node.DefaultClientURL, "comma-separated URLs to serve clients on")
	advertiseClient := fs.String("advertise-client-urls", "", "comma-separated client URLs to advertise to the rest of the cluster (default: --listen-client-urls)")
	listenPeer := fs.String("listen-peer-urls", node.DefaultPeerURL, "URL to listen on for Raft traffic from peers")
	advertisePeer := fs.String("initial-advertise-peer-urls", "", "this member's peer URL as the rest of the cluster reaches it (default: --listen-peer-urls)")
	initialCluster := fs.String("initial-cluster", "", "initial cluster configuration, name=peerURL,... (default: --name=first --initial-advertise-peer-urls)")
	join := fs.String("join", "", "comma-separated client URLs of members of a running cluster to join (a new node, or one that joined before)")
	fs.StringVar(&cfg.InitialClusterState, "initial-cluster-state", cfg.InitialClusterState, "initial cluster state (\"new\" or \"existing\")")
	fs.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "voting replicas of each data range, on distinct nodes (every node when fewer); the same on every member")
	fs.DurationVar(&cfg.DeadNodeTimeout, "dead-node-timeout", cfg.DeadNodeTimeout, "a node unheard from for this long is dead, and its replicas are made again on other nodes")
	fs.IntVar(&cfg.MaxRequestBytes, "max-request-bytes", cfg.MaxRequestBytes, "maximum client request size in bytes the server will accept")
	maxStreams := fs.Uint("max-concurrent-streams", math.MaxUint32, "maximum concurrent streams that each client can open at a time")
	fs.IntVar(&cfg.MaxTxnOps, "max-txn-ops", cfg.MaxTxnOps, "maximum number of operations permitted in a transaction")
	fs.Int64Var(&cfg.QuotaBackendBytes, "quota-backend-bytes", cfg.QuotaBackendBytes, "raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB)")
	heartbeatMS := fs.Uint64("heartbeat-interval", node.DefaultHeartbeatMS, "time (in milliseconds) of a heartbeat interval")
	electionMS := fs.Uint64("election-timeout", node.DefaultElectionMS, "time (in milliseconds) for an election to timeout")
	fs.Uint64Var(&cfg.SnapshotCount, "snapshot-count", cfg.SnapshotCount, fmt.Sprintf("number of committed Raft entries of a range to trigger a snapshot of it (and a compaction of its Raft log); 0 takes the default: %d, and on a one-node cluster also a snapshot every %d MiB of a range's entries", node.DefaultSnapshotCount, node.DefaultSoleSnapshotBytes>>20))
	fs.Uint64Var(&cfg.SnapshotCatchUpEntries, "snapshot-catchup-entries", cfg.SnapshotCatchUpEntries, fmt.Sprintf("number of entries for a slow follower to catch up after compacting the raft storage entries; 0 takes the default: %d, or %d on a one-node cluster", node.DefaultSnapshotCatchUp, node.DefaultSoleSnapshotCatchUp))
	fs.StringVar(&cfg.AutoCompactionMode, "auto-compaction-mode", cfg.AutoCompactionMode, "interpret --auto-compaction-retention as \"periodic\" (duration) or \"revision\" (count)")
	fs.StringVar(&cfg.AutoCompactionRetention, "auto-compaction-retention", cfg.AutoCompactionRetention, "auto compaction retention for mvcc key value store; 0 means disable auto compaction")
	fs.DurationVar(&cfg.WatchProgressNotifyInterval, "watch-progress-notify-interval", cfg.WatchProgressNotifyInterval, "duration of periodic watch progress notifications")
	fs.Int64Var(&cfg.RangeMaxBytes, "range-max-bytes", cfg.RangeMaxBytes, "split a range in half when its data on disk grows past this many bytes")
	fs.Float64Var(&cfg.RangeSplitQPS, "range-split-qps", cfg.RangeSplitQPS, "split a range at the key halving its load when it serves more requests per second than this for three checks (10 s apart) in a row; 0 disables")
	fs.Uint64Var(&cfg.LogDBShards, "raft-logdb-shards", cfg.LogDBShards, "shards of the Raft log store (one fsync each per write cycle; keep small on one disk)")
	fs.Uint64Var(&cfg.RaftStepWorkers, "raft-step-workers", cfg.RaftStepWorkers, "goroutines stepping the Raft groups (each writes the Raft log with its own fsync per cycle; keep small on one disk)")
	fs.StringVar(&cfg.ClientTLS.CertFile, "cert-file", "", "path to the client server TLS cert file")
	fs.StringVar(&cfg.ClientTLS.KeyFile, "key-file", "", "path to the client server TLS key file")
	fs.StringVar(&cfg.ClientTLS.TrustedCAFile, "trusted-ca-file", "", "path to the client server TLS trusted CA cert file")
	fs.BoolVar(&cfg.ClientTLS.ClientCertAuth, "client-cert-auth", false, "enable client cert authentication")
	fs.StringVar(&cfg.ClientTLS.CRLFile, "client-crl-file", "", "path to the client certificate revocation list file")
	fs.BoolVar(&cfg.ClientTLS.AutoTLS, "auto-tls", false, "client TLS using generated certificates")
	fs.StringVar(&cfg.PeerTLS.CertFile, "peer-cert-file", "", "path to the peer server TLS cert file")
	fs.StringVar(&cfg.PeerTLS.KeyFile, "peer-key-file", "", "path to the peer server TLS key file")
	fs.StringVar(&cfg.PeerTLS.TrustedCAFile, "peer-trusted-ca-file", "", "path to the peer server TLS trusted CA file")
	fs.BoolVar(&cfg.PeerTLS.ClientCertAuth, "peer-client-cert-auth", false, "enable peer client cert authentication")
	fs.StringVar(&cfg.PeerTLS.CRLFile, "peer-crl-file", "", "path to the peer certificate revocation list file")
	fs.StringVar(&cfg.PeerTLS.AllowedCN, "peer-cert-allowed-cn", "", "allowed CN for inter peer authentication")
	fs.BoolVar(&cfg.PeerTLS.AutoTLS, "peer-auto-tls", false, "peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided")
	cipherSuites := fs.String("cipher-suites", "", "comma-separated list of supported TLS cipher suites between client/server and peers (empty will be auto-populated by Go)")
	tlsMin := fs.String("tls-min-version", "TLS1.2", "minimum TLS version supported by tessera (TLS1.2 or TLS1.3)")
	tlsMax := fs.String("tls-max-version", "", "maximum TLS version supported by tessera (empty: Go's maximum)")
	fs.StringVar(&cfg.AuthToken, "auth-token", cfg.AuthToken, "specify auth token type and its options: \"simple\", or \"jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m\"")
	authTTL := fs.Uint("auth-token-ttl", uint(node.DefaultAuthTokenTTL/time.Second), "the lifetime in seconds of the auth token")
	fs.IntVar(&cfg.BcryptCost, "bcrypt-cost", cfg.BcryptCost, "specify bcrypt algorithm cost factor for auth password hashing")
	listenMetrics := fs.String("listen-metrics-urls", "", "comma-separated http URLs to serve /health (and, with --enable-pprof, /debug/pprof) on")
	fs.BoolVar(&cfg.EnablePprof, "enable-pprof", false, "serve runtime profiles under /debug/pprof on --listen-metrics-urls")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if err := flagsFromEnv(fs, os.LookupEnv); err != nil {
		return cfg, err
	}
	if *version {
		fmt.Fprintf(out, "tessera: etcd API version %s\n", server.APIVersion)
		return cfg, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg.ListenMetricsURLs = splitList(*listenMetrics)
	cfg.ListenClientURLs = splitList(*listenClient)
	cfg.AdvertiseClientURLs = cfg.ListenClientURLs
	if *advertiseClient != "" {
		cfg.AdvertiseClientURLs = splitList(*advertiseClient)
	}
	cfg.Join = splitList(*join)
	cfg.ListenPeerURLs = splitList(*listenPeer)
	cfg.InitialAdvertisePeerURLs = cfg.ListenPeerURLs
	if *advertisePeer != "" {
		cfg.InitialAdvertisePeerURLs = splitList(*advertisePeer)
	}
	if *initialCluster != "" {
		members, err := node.ParseInitialCluster(*initialCluster)
		if err != nil {
			return cfg, err
		}
		cfg.InitialCluster = members
	} else if len(cfg.InitialAdvertisePeerURLs) > 0 {
		cfg.InitialCluster = []node.Member{{Name: cfg.Name, PeerURL: cfg.InitialAdvertisePeerURLs[0]}}
	}
	if cfg.QuotaBackendBytes == 0 {
		cfg.QuotaBackendBytes = node.DefaultQuotaBackendBytes
	}
	cfg.AuthTokenTTL = time.Duration(*authTTL) * time.Second
	if *maxStreams == 0 || *maxStreams > math.MaxUint32 {
		return cfg, fmt.Errorf("--max-concurrent-streams must be from 1 to %d", uint32(math.MaxUint32))
	}
	cfg.MaxConcurrentStreams = uint32(*maxStreams)
	var err error
	if cfg.ClientTLS.CipherSuites, err = tlsutil.ParseCipherSuites(splitList(*cipherSuites)); err != nil {
		return cfg, fmt.Errorf("--cipher-suites: %w", err)
	}
	if cfg.ClientTLS.MinVersion, err = tlsutil.ParseVersion(*tlsMin); err != nil {
		return cfg, fmt.Errorf("--tls-min-version: %w", err)
	}
	if cfg.ClientTLS.MaxVersion, err = tlsutil.ParseVersion(*tlsMax); err != nil {
		return cfg, fmt.Errorf("--tls-max-version: %w", err)
	}
	// The cipher suites and versions are the peers' too, as etcd's.
	cfg.PeerTLS.CipherSuites, cfg.PeerTLS.MinVersion, cfg.PeerTLS.MaxVersion = cfg.ClientTLS.CipherSuites, cfg.ClientTLS.MinVersion, cfg.ClientTLS.MaxVersion
	if set["heartbeat-interval"] || set["election-timeout"] {
		cfg.HeartbeatInterval = time.Duration(*heartbeatMS) * time.Millisecond
		cfg.ElectionTimeout = time.Duration(*electionMS) * time.Millisecond
	}
	return cfg, cfg.Validate()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// flagsFromEnv sets each flag not given on the command line from its
// environment variable, as etcd does: ETCD_ and the flag's name in capitals
// with "_" for "-" (ETCD_INITIAL_CLUSTER for --initial-cluster), the form
// `etcdctl member add` prints.
func flagsFromEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		key := "ETCD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(key); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("invalid value %q for %s: %v", v, key, serr)
			}
		}
	})
	return err
}
