package node

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/internal/tlsutil"
	"github.com/tesserakv/tessera/watchhub"
)

// Config of one node. cmd/tessera fills it from etcd-named flags; Validate
// reports problems naming the flag.
type Config struct {
	Name    string
	DataDir string

	ListenClientURLs         []string
	AdvertiseClientURLs      []string
	ListenPeerURLs           []string
	InitialAdvertisePeerURLs []string
	// InitialCluster lists every member as name=peerURL, in flag order; a
	// member's replica ID is its position (from 1).
	InitialCluster []Member
	// InitialClusterState "existing" has a node with no data join the
	// running cluster of the other --initial-cluster members, asking on
	// their peer URLs, as --join does through client URLs (etcd's way of
	// starting a member added with MemberAdd); a node with data ignores it.
	InitialClusterState string // "new" or "existing"
	// Join lists client URLs of members of a running cluster: a node with
	// no data joins that cluster through them (as a new node) instead of
	// forming one with InitialCluster. A node that has joined keeps its ID
	// in its data directory and rejoins from it.
	Join []string

	// Replicas is how many voting replicas each data range has, on distinct
	// nodes (all the nodes when fewer). A new cluster puts its first range on
	// the first Replicas members of InitialCluster; a split's new range has
	// its parent's replicas. Every member must be given the same value.
	Replicas int

	MaxRequestBytes int
	// MaxConcurrentStreams bounds the gRPC streams (calls in flight, watch
	// and keep-alive streams) of one client connection (etcd's
	// --max-concurrent-streams; 0: no bound).
	MaxConcurrentStreams uint32
	MaxTxnOps            int
	QuotaBackendBytes    int64

	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration

	// SnapshotCount: a range replica snapshots its state machine and
	// compacts its Raft log every this many entries (etcd's
	// --snapshot-count; Tessera counts Raft entries, and the proposer puts
	// concurrent writes of a range into one entry). SnapshotCatchUpEntries
	// entries are kept behind a compaction for a slow follower to catch up
	// from before it needs a snapshot. Zero takes the default, which
	// depends on the cluster (see raftLogSettings).
	SnapshotCount          uint64
	SnapshotCatchUpEntries uint64

	AutoCompactionMode      string // "periodic" or "revision"
	AutoCompactionRetention string

	// WatchProgressNotifyInterval is how often watches that asked for
	// progress notifications get one (etcd's default: 10 minutes).
	WatchProgressNotifyInterval time.Duration

	// LogDBShards is Dragonboat's LogDB shard count (one fsync each per cycle).
	LogDBShards uint64
	// RaftStepWorkers is Dragonboat's step worker count (ExecShards). Each
	// worker writes the Raft log of the ranges it steps with its own fsync
	// per cycle, so on one disk fewer workers batch more ranges per fsync.
	RaftStepWorkers uint64

	// ListenMetricsURLs serve /health and, with EnablePprof, /debug/pprof.
	ListenMetricsURLs []string
	EnablePprof       bool

	// RangeMaxBytes: a range larger than this on disk is split in half.
	RangeMaxBytes int64
	// RangeSplitQPS: a range that serves more requests per second than this
	// for three check intervals in a row is split at the key halving its
	// load; 0 turns load-based splits off.
	RangeSplitQPS float64
	// SplitCheckInterval is how often range leaders check their size and
	// load (default 10s; not a flag).
	SplitCheckInterval time.Duration
	// DeadNodeTimeout: a node unheard for this long is dead, and its
	// replicas are made again on other nodes (--dead-node-timeout).
	DeadNodeTimeout time.Duration
	// PlacementInterval is how often the meta range's leader runs the
	// placement schedulers (default 2s; negative: never; not a flag).
	PlacementInterval time.Duration

	// ClientTLS is the client (and metrics) listeners' certificate and
	// checks: etcd's --cert-file, --key-file, --trusted-ca-file,
	// --client-cert-auth, --client-crl-file, --auto-tls, --cipher-suites,
	// --tls-min-version and --tls-max-version. With ClientCertAuth the
	// verified certificate's common name is the user when a request
	// carries no token.
	ClientTLS tlsutil.Info
	// PeerTLS is the peer port's (Raft and the nodes' gRPC), both ways:
	// etcd's --peer-cert-file, --peer-key-file, --peer-trusted-ca-file,
	// --peer-client-cert-auth, --peer-crl-file, --peer-cert-allowed-cn,
	// --peer-auto-tls; with https peer URLs.
	PeerTLS tlsutil.Info

	// AuthToken is etcd's --auth-token: "simple", or
	// "jwt,pub-key=FILE,priv-key=FILE,sign-method=METHOD,ttl=DURATION".
	// AuthTokenTTL is how long a token from Authenticate is good for;
	// BcryptCost the cost of the password hashes this node makes.
	AuthToken    string
	AuthTokenTTL time.Duration
	BcryptCost   int

	Logger *slog.Logger

	// Knobs are hooks for tests only.
	Knobs TestingKnobs
}

// Member of the initial cluster.
type Member struct {
	Name    string
	PeerURL string
}

// Defaults as etcd has them, except the data directory.
const (
	DefaultName              = "default"
	DefaultDataDir           = "tessera.data"
	DefaultClientURL         = "http://127.0.0.1:2379"
	DefaultPeerURL           = "http://localhost:2380"
	DefaultMaxRequestBytes   = 1536 * 1024
	DefaultMaxTxnOps         = 128
	DefaultQuotaBackendBytes = 2 * 1024 * 1024 * 1024
	DefaultHeartbeatMS       = 100
	DefaultAuthTokenTTL      = 300 * time.Second
	DefaultElectionMS        = 1000
	DefaultSnapshotCount     = 10000
	DefaultSnapshotCatchUp   = 5000
	// A one-node cluster's defaults: its Raft logs need no catch-up entries
	// (no follower exists), and a snapshot of a range's state machine,
	// already on disk, costs one fsync, so unless --snapshot-count is given
	// a range is also snapshotted every DefaultSoleSnapshotBytes of entries,
	// which keeps its log short enough to be truncated before Dragonboat's
	// log store flushes it (see raftLogSettings).
	DefaultSoleSnapshotCatchUp = 50
	DefaultSoleSnapshotBytes   = 2 << 20
	DefaultRangeMaxBytes       = 64 * 1024 * 1024
	DefaultRangeSplitQPS       = 2500
	DefaultRaftStepWorkers     = 1
	DefaultReplicas            = 3
	DefaultDeadNodeTimeout     = 5 * time.Minute
)

// DefaultConfig is a single node on 127.0.0.1:2379 with data in ./tessera.data.
func DefaultConfig() Config {
	return Config{
		Name:                     DefaultName,
		DataDir:                  DefaultDataDir,
		ListenClientURLs:         []string{DefaultClientURL},
		AdvertiseClientURLs:      []string{DefaultClientURL},
		ListenPeerURLs:           []string{DefaultPeerURL},
		InitialAdvertisePeerURLs: []string{DefaultPeerURL},
		InitialCluster:           []Member{{Name: DefaultName, PeerURL: DefaultPeerURL}},
		InitialClusterState:      "new",
		Replicas:                 DefaultReplicas,
		DeadNodeTimeout:          DefaultDeadNodeTimeout,
		MaxRequestBytes:          DefaultMaxRequestBytes,
		MaxTxnOps:                DefaultMaxTxnOps,
		QuotaBackendBytes:        DefaultQuotaBackendBytes,
		HeartbeatInterval:        DefaultHeartbeatMS * time.Millisecond,
		ElectionTimeout:          DefaultElectionMS * time.Millisecond,
		AutoCompactionMode:       "periodic",
		AutoCompactionRetention:  "0",
		LogDBShards:              1,
		RaftStepWorkers:          DefaultRaftStepWorkers,
		RangeMaxBytes:            DefaultRangeMaxBytes,
		RangeSplitQPS:            DefaultRangeSplitQPS,

		WatchProgressNotifyInterval: watchhub.DefaultProgressNotifyInterval,
		AuthToken:                   "simple",
		AuthTokenTTL:                DefaultAuthTokenTTL,
		BcryptCost:                  bcrypt.DefaultCost,
	}
}

// ParseInitialCluster parses etcd's --initial-cluster value.
func ParseInitialCluster(s string) ([]Member, error) {
	var out []Member
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		name, u, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("--initial-cluster: %q is not name=peerURL", part)
		}
		if seen[name] {
			return nil, fmt.Errorf("--initial-cluster: member %q appears twice", name)
		}
		seen[name] = true
		if _, err := hostPortOf(u); err != nil {
			return nil, fmt.Errorf("--initial-cluster: member %q: %w", name, err)
		}
		out = append(out, Member{Name: name, PeerURL: u})
	}
	return out, nil
}

// hostPortOf returns host:port of an http or https URL.
func hostPortOf(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("invalid URL %q: %v", raw, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "unix", "unixs":
		return "", fmt.Errorf("URL %q: unix sockets are not supported; use http:// or https://", raw)
	default:
		return "", fmt.Errorf("URL %q: scheme must be http or https", raw)
	}
	if u.Port() == "" || u.Hostname() == "" {
		return "", fmt.Errorf("URL %q must have a host and a port", raw)
	}
	return u.Host, nil
}

// Validate checks the configuration, naming the flag at fault.
func (c *Config) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("--name must not be empty")
	}
	if c.DataDir == "" {
		return fmt.Errorf("--data-dir must not be empty")
	}
	// In flag order, so the error names the flag the user set first.
	for _, f := range []struct {
		flag string
		urls []string
	}{
		{"--listen-client-urls", c.ListenClientURLs},
		{"--advertise-client-urls", c.AdvertiseClientURLs},
		{"--listen-peer-urls", c.ListenPeerURLs},
		{"--initial-advertise-peer-urls", c.InitialAdvertisePeerURLs},
	} {
		flag, urls := f.flag, f.urls
		if len(urls) == 0 {
			return fmt.Errorf("%s must name at least one URL", flag)
		}
		for _, u := range urls {
			if _, err := hostPortOf(u); err != nil {
				return fmt.Errorf("%s: %w", flag, err)
			}
		}
	}
	for _, u := range c.ListenMetricsURLs {
		if _, err := hostPortOf(u); err != nil {
			return fmt.Errorf("--listen-metrics-urls: %w", err)
		}
	}
	if err := c.validateTLS(); err != nil {
		return err
	}
	if c.EnablePprof && len(c.ListenMetricsURLs) == 0 {
		return fmt.Errorf("--enable-pprof needs --listen-metrics-urls (profiles are served there)")
	}
	for _, u := range c.Join {
		if _, err := hostPortOf(u); err != nil {
			return fmt.Errorf("--join: %w", err)
		}
	}
	switch _, ok := c.replicaID(); {
	case len(c.Join) > 0 && len(c.InitialCluster) > 1:
		return fmt.Errorf("--join and a --initial-cluster of several members are two ways to form a cluster; give one")
	case len(c.Join) == 0 && !ok:
		return fmt.Errorf("--initial-cluster has no member named %q (--name)", c.Name)
	}
	if c.InitialClusterState != "new" && c.InitialClusterState != "existing" {
		return fmt.Errorf("--initial-cluster-state must be \"new\" or \"existing\", not %q", c.InitialClusterState)
	}
	if c.Replicas <= 0 {
		return fmt.Errorf("--replicas must be positive")
	}
	if c.DeadNodeTimeout <= 0 {
		return fmt.Errorf("--dead-node-timeout must be positive")
	}
	if c.MaxRequestBytes <= 0 {
		return fmt.Errorf("--max-request-bytes must be positive")
	}
	if c.MaxTxnOps <= 0 {
		return fmt.Errorf("--max-txn-ops must be positive")
	}
	if c.QuotaBackendBytes < 0 {
		return fmt.Errorf("--quota-backend-bytes must not be negative")
	}
	if c.HeartbeatInterval < time.Millisecond {
		return fmt.Errorf("--heartbeat-interval must be at least 1 (ms)")
	}
	if c.ElectionTimeout < 5*c.HeartbeatInterval {
		return fmt.Errorf("--election-timeout (%v) must be at least 5 times --heartbeat-interval (%v)", c.ElectionTimeout, c.HeartbeatInterval)
	}
	if _, err := parseCompaction(c.AutoCompactionMode, c.AutoCompactionRetention); err != nil {
		return err
	}
	if c.RangeMaxBytes < 1024 {
		return fmt.Errorf("--range-max-bytes must be at least 1024")
	}
	if c.RangeSplitQPS < 0 {
		return fmt.Errorf("--range-split-qps must not be negative (0 turns load-based splits off)")
	}
	if c.LogDBShards == 0 {
		return fmt.Errorf("--raft-logdb-shards must be at least 1")
	}
	if c.RaftStepWorkers == 0 {
		return fmt.Errorf("--raft-step-workers must be at least 1")
	}
	if c.WatchProgressNotifyInterval < 0 {
		return fmt.Errorf("--watch-progress-notify-interval must not be negative")
	}
	if _, err := auth.ParseAuthToken(c.AuthToken); err != nil {
		return fmt.Errorf("--auth-token: %w", err)
	}
	if c.AuthTokenTTL <= 0 {
		return fmt.Errorf("--auth-token-ttl must be positive")
	}
	if c.BcryptCost < bcrypt.MinCost || c.BcryptCost > bcrypt.MaxCost {
		return fmt.Errorf("invalid --bcrypt-cost %d: want %d to %d", c.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	return nil
}

// replicaID is this node's position in --initial-cluster, from 1.
func (c *Config) replicaID() (uint64, bool) {
	for i, m := range c.InitialCluster {
		if m.Name == c.Name {
			return uint64(i + 1), true
		}
	}
	return 0, false
}

// IsHTTPS reports whether a URL's scheme is https.
func IsHTTPS(raw string) bool { return strings.HasPrefix(raw, "https://") }

// validateTLS checks the TLS flags against the URLs that need them.
func (c *Config) validateTLS() error {
	t := c.ClientTLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		return fmt.Errorf("--cert-file and --key-file go together")
	}
	if t.ClientCertAuth && t.TrustedCAFile == "" {
		return fmt.Errorf("--client-cert-auth needs --trusted-ca-file, the CA client certificates are verified against")
	}
	if t.MaxVersion != 0 && t.MaxVersion < t.MinVersion {
		return fmt.Errorf("--tls-max-version must not be below --tls-min-version")
	}
	for _, f := range []struct {
		flag string
		urls []string
	}{{"--listen-client-urls", c.ListenClientURLs}, {"--listen-metrics-urls", c.ListenMetricsURLs}} {
		for _, u := range f.urls {
			if IsHTTPS(u) && t.Empty() {
				return fmt.Errorf("%s %s: TLS key/cert (--cert-file, --key-file) must be provided for an https URL (or --auto-tls)", f.flag, u)
			}
		}
	}
	p := c.PeerTLS
	if (p.CertFile == "") != (p.KeyFile == "") {
		return fmt.Errorf("--peer-cert-file and --peer-key-file go together")
	}
	if p.ClientCertAuth && p.TrustedCAFile == "" {
		return fmt.Errorf("--peer-client-cert-auth needs --peer-trusted-ca-file, the CA peer certificates are verified against")
	}
	if p.AllowedCN != "" && !p.ClientCertAuth {
		return fmt.Errorf("--peer-cert-allowed-cn needs --peer-client-cert-auth")
	}
	secure := IsHTTPS(c.InitialAdvertisePeerURLs[0])
	for _, f := range []struct {
		flag string
		urls []string
	}{{"--listen-peer-urls", c.ListenPeerURLs}, {"--initial-advertise-peer-urls", c.InitialAdvertisePeerURLs}} {
		for _, u := range f.urls {
			if IsHTTPS(u) != secure {
				return fmt.Errorf("%s %s: the peer URLs are all http or all https", f.flag, u)
			}
		}
	}
	for _, m := range c.InitialCluster {
		if IsHTTPS(m.PeerURL) != secure {
			return fmt.Errorf("--initial-cluster %s=%s: the peer URLs are all http or all https", m.Name, m.PeerURL)
		}
	}
	if secure && p.Empty() {
		return fmt.Errorf("--listen-peer-urls %s: TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for an https URL (or --peer-auto-tls)", c.ListenPeerURLs[0])
	}
	if !secure && !p.Empty() {
		return fmt.Errorf("--peer-cert-file/--peer-auto-tls need https peer URLs (--listen-peer-urls, --initial-advertise-peer-urls)")
	}
	return nil
}

// PeerSecure reports whether the members talk over peer TLS.
func (c *Config) PeerSecure() bool { return IsHTTPS(c.InitialAdvertisePeerURLs[0]) }

// AnyHTTPS reports whether any of urls is https.
func AnyHTTPS(urls []string) bool {
	for _, u := range urls {
		if IsHTTPS(u) {
			return true
		}
	}
	return false
}
