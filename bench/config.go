package bench

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// Config is one tessbench run: the flags, with their defaults in
// DefaultConfig and checked once by Validate. It is echoed as the "params" of
// the JSON result.
type Config struct {
	Endpoints []string `json:"endpoints"`
	// Clients issue requests concurrently, one at a time each, sharing Conns
	// gRPC connections round-robin.
	Clients int `json:"clients"`
	Conns   int `json:"conns"`
	// Total requests, or, when Duration is set, as many as fit in it.
	Total           int64         `json:"total"`
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"duration_seconds"`
	// RatePerSecond limits requests per second over all clients; 0 = none.
	RatePerSecond  float64 `json:"rate"`
	KeySizeBytes   int     `json:"key_size"`
	ValueSizeBytes int     `json:"value_size"`
	// KeySpace is the number of distinct keys (put, range, txn-put, txn-span); 0 with
	// sequential keys means every request writes a new key.
	KeySpace       int64 `json:"key_space"`
	SequentialKeys bool  `json:"sequential_keys"`
	// range
	RangePrefix bool   `json:"range_prefix"`
	RangeLimit  int64  `json:"range_limit"`
	Consistency string `json:"consistency"`
	// watch
	Watchers     int `json:"watchers"`
	WatchStreams int `json:"watch_streams"`
	// WatchClient is how the watch workload's watchers read: "clientv3"
	// (the etcd client's Watch, what applications use) or "grpc" (the Watch
	// RPC's streams read directly, so the client's own hand-offs do not set
	// the latency).
	WatchClient string `json:"watch_client"`
	// lease, k8s
	LeaseTTLSeconds int64 `json:"lease_ttl_seconds"`
	// list: Objects of ValueSizeBytes under one prefix, read in pages of
	// PageLimit.
	Objects   int64 `json:"objects"`
	PageLimit int64 `json:"page_limit"`
	// k8s
	K8sNamespaces     int `json:"k8s_namespaces"`
	K8sObjects        int `json:"k8s_objects"`
	K8sObjectMinBytes int `json:"k8s_object_min_bytes"`
	K8sObjectMaxBytes int `json:"k8s_object_max_bytes"`

	Seed        uint64        `json:"seed"`
	ServerPIDs  []int         `json:"server_pids"`
	DialTimeout time.Duration `json:"-"`
	// TLS and the user the clients connect with (etcdctl's --cacert,
	// --cert, --key, --insecure-skip-tls-verify, --user, --password).
	TLS      *tls.Config `json:"-"`
	User     string      `json:"-"`
	Password string      `json:"-"`
	// Progress draws a progress bar on stderr (set when stdout is a
	// terminal).
	Progress bool `json:"-"`
	// Labels carried into the result for compare reports.
	Case     string `json:"-"`
	Target   string `json:"-"`
	Topology string `json:"-"`
}

// DefaultConfig returns the defaults: etcd's published benchmark shape
// (100 clients over 10 connections, 256-byte values).
func DefaultConfig() Config {
	return Config{
		Endpoints:         []string{"127.0.0.1:2379"},
		Clients:           100,
		Conns:             10,
		Total:             10000,
		KeySizeBytes:      16,
		ValueSizeBytes:    256,
		KeySpace:          100000,
		Consistency:       "l",
		Watchers:          100,
		WatchStreams:      10,
		WatchClient:       WatchClientV3,
		LeaseTTLSeconds:   60,
		Objects:           10000,
		PageLimit:         500,
		K8sNamespaces:     10,
		K8sObjects:        1000,
		K8sObjectMinBytes: 1 << 10,
		K8sObjectMaxBytes: 10 << 10,
		Seed:              1,
		DialTimeout:       5 * time.Second,
	}
}

// Validate checks the config for workload, naming the offending flag.
func (c *Config) Validate(workload string) error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if len(c.Endpoints) == 0 {
		bad("endpoints", "at least one endpoint is needed")
	}
	if c.Clients < 1 {
		bad("clients", "must be at least 1, got %d", c.Clients)
	}
	if c.Conns < 1 || c.Conns > max(c.Clients, 1) {
		bad("conns", "must be between 1 and --clients (%d), got %d", c.Clients, c.Conns)
	}
	if c.Duration < 0 {
		bad("duration", "must not be negative")
	}
	if c.Duration == 0 && c.Total < 1 {
		bad("total", "must be at least 1 (or give --duration), got %d", c.Total)
	}
	if c.Duration > 0 {
		c.Total = 0 // --duration wins
	}
	c.DurationSeconds = c.Duration.Seconds()
	if c.RatePerSecond < 0 {
		bad("rate", "must not be negative")
	}
	if c.ValueSizeBytes < 0 {
		bad("value-size", "must not be negative")
	}
	if c.KeySpace < 0 || (c.KeySpace == 0 && !c.SequentialKeys) {
		bad("key-space", "must be at least 1 (0 only with --sequential-keys), got %d", c.KeySpace)
	}
	if c.KeySpace > 0 {
		if need := minKeySize("x/", c.KeySpace); c.KeySizeBytes < need {
			bad("key-size", "%d bytes cannot hold %d distinct keys; need at least %d", c.KeySizeBytes, c.KeySpace, need)
		}
	}
	if c.Consistency != "l" && c.Consistency != "s" {
		bad("consistency", `must be "l" (linearizable) or "s" (serializable), got %q`, c.Consistency)
	}
	if c.RangeLimit < 0 {
		bad("range-limit", "must not be negative")
	}
	if c.Watchers < 1 {
		bad("watchers", "must be at least 1")
	}
	if c.WatchStreams < 1 || c.WatchStreams > c.Watchers {
		bad("watch-streams", "must be between 1 and --watchers (%d), got %d", c.Watchers, c.WatchStreams)
	}
	if c.WatchClient != WatchClientV3 && c.WatchClient != WatchClientGRPC {
		bad("watch-client", "must be %q or %q, got %q", WatchClientV3, WatchClientGRPC, c.WatchClient)
	}
	if c.LeaseTTLSeconds < 1 {
		bad("lease-ttl", "must be at least 1 second")
	}
	if c.Objects < 1 {
		bad("objects", "must be at least 1")
	}
	if c.PageLimit < 1 {
		bad("page-limit", "must be at least 1")
	}
	if c.K8sNamespaces < 1 || c.K8sObjects < 1 {
		bad("k8s-objects", "objects and namespaces must be at least 1")
	}
	if c.K8sObjectMinBytes < 1 || c.K8sObjectMaxBytes < c.K8sObjectMinBytes {
		bad("k8s-object-max", "need 1 <= min (%d) <= max (%d)", c.K8sObjectMinBytes, c.K8sObjectMaxBytes)
	}
	if workload == "watch" && c.Duration == 0 && c.Total < 1 {
		bad("total", "watch needs a bounded number of puts")
	}
	return errors.Join(errs...)
}
