package main

import (
	"errors"
	"flag"
	"io"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "tessera.data" || cfg.ListenClientURLs[0] != "http://127.0.0.1:2379" || cfg.Name != "default" {
		t.Fatalf("defaults = %+v", cfg)
	}
	if cfg.MaxRequestBytes != 1536*1024 || cfg.ElectionTimeout != time.Second || cfg.HeartbeatInterval != 100*time.Millisecond {
		t.Fatalf("defaults = %+v", cfg)
	}
	if cfg.SnapshotCount != 0 || cfg.SnapshotCatchUpEntries != 0 {
		t.Fatalf("snapshot defaults = %d, %d; want 0, 0 (the server picks them by cluster size)", cfg.SnapshotCount, cfg.SnapshotCatchUpEntries)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
		{[]string{"--max-request-bytes=lots"}, "invalid value"},
		{[]string{"--heartbeat-interval=500", "--election-timeout=1000"}, "--election-timeout"},
		{[]string{"--listen-client-urls=https://127.0.0.1:2379"}, "--cert-file, --key-file) must be provided"},
		{[]string{"--listen-metrics-urls=https://127.0.0.1:2381"}, "--listen-metrics-urls"},
		{[]string{"--listen-peer-urls=https://127.0.0.1:2380"}, "(--peer-cert-file, --peer-key-file) must be provided"},
		{[]string{"--peer-cert-file=a.pem", "--peer-key-file=b.pem"}, "need https peer URLs"},
		{[]string{"--peer-cert-allowed-cn=member"}, "needs --peer-client-cert-auth"},
		{[]string{"--listen-peer-urls=https://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380", "--peer-auto-tls"}, "all http or all https"},
		{[]string{"--listen-client-urls=unix://x:1"}, "unix sockets are not supported"},
		{[]string{"--cert-file=a.pem"}, "--cert-file and --key-file go together"},
		{[]string{"--client-cert-auth"}, "--client-cert-auth needs --trusted-ca-file"},
		{[]string{"--tls-min-version=TLS1.0"}, "--tls-min-version"},
		{[]string{"--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"}, "--tls-max-version must not be below"},
		{[]string{"--cipher-suites=TLS_FAST"}, "unexpected TLS cipher suite"},
		{[]string{"--auth-token=jwt"}, "--auth-token"},
		{[]string{"--bcrypt-cost=99"}, "--bcrypt-cost"},
		{[]string{"--max-concurrent-streams=0"}, "--max-concurrent-streams"},
		{[]string{"--listen-client-urls=127.0.0.1:2379"}, "--listen-client-urls"},
		{[]string{"--initial-cluster=a=http://127.0.0.1:2380", "--name=b"}, "no member named \"b\""},
		{[]string{"--initial-cluster=a"}, "not name=peerURL"},
		{[]string{"--auto-compaction-mode=daily"}, "--auto-compaction-mode"},
		{[]string{"--auto-compaction-retention=soon"}, "--auto-compaction-retention"},
		{[]string{"--initial-cluster-state=old"}, "--initial-cluster-state"},
		{[]string{"--log-level=loud"}, "--log-level"},
		{[]string{"--watch-progress-notify-interval=-1s"}, "--watch-progress-notify-interval"},
		{[]string{"--watch-progress-notify-interval=often"}, "invalid value"},
		{[]string{"--raft-step-workers=0"}, "--raft-step-workers"},
		{[]string{"--snapshot-count=-1"}, "invalid value"},
		{[]string{"stray"}, "unexpected argument"},
	} {
		_, err := parseFlags(tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) error = %v, want one containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := parseFlags([]string{"--help"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	var out strings.Builder
	if _, err := parseFlags([]string{"--version"}, &out, io.Discard); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "3.7") {
		t.Errorf("--version: %v, printed %q", err, out.String())
	}
}

func TestParseFlagsCluster(t *testing.T) {
	cfg, err := parseFlags([]string{
		"--name=n2",
		"--initial-cluster=n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380",
		"--listen-peer-urls=http://127.0.0.1:22380",
		"--listen-client-urls=http://127.0.0.1:22379",
		"--heartbeat-interval=50", "--election-timeout=500",
		"--auto-compaction-mode=revision", "--auto-compaction-retention=1000",
		"--snapshot-count=2000", "--snapshot-catchup-entries=700",
	}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SnapshotCount != 2000 || cfg.SnapshotCatchUpEntries != 700 {
		t.Fatalf("snapshot flags = %d, %d", cfg.SnapshotCount, cfg.SnapshotCatchUpEntries)
	}
	if len(cfg.InitialCluster) != 3 || cfg.InitialAdvertisePeerURLs[0] != "http://127.0.0.1:22380" || cfg.ElectionTimeout != 500*time.Millisecond {
		t.Fatalf("cfg = %+v", cfg)
	}
}

// TestParseFlagsFromEnv: the variables `etcdctl member add` prints set the
// flags not given on the command line, as in etcd; a flag given wins, and
// a bad value names its variable.
func TestParseFlagsFromEnv(t *testing.T) {
	t.Setenv("ETCD_NAME", "n2")
	t.Setenv("ETCD_INITIAL_CLUSTER", "n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380")
	t.Setenv("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://127.0.0.1:22380")
	t.Setenv("ETCD_INITIAL_CLUSTER_STATE", "existing")
	t.Setenv("ETCD_DATA_DIR", "from-env")
	cfg, err := parseFlags([]string{"--data-dir=from-flag", "--listen-peer-urls=http://127.0.0.1:22380"}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "n2" || len(cfg.InitialCluster) != 2 || cfg.InitialClusterState != "existing" ||
		cfg.InitialAdvertisePeerURLs[0] != "http://127.0.0.1:22380" || cfg.DataDir != "from-flag" {
		t.Fatalf("cfg = %+v", cfg)
	}
	t.Setenv("ETCD_HEARTBEAT_INTERVAL", "soon")
	if _, err := parseFlags(nil, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "ETCD_HEARTBEAT_INTERVAL") {
		t.Fatalf("a bad ETCD_HEARTBEAT_INTERVAL: %v", err)
	}
}

func TestParseFlagsMetrics(t *testing.T) {
	if _, err := parseFlags([]string{"--enable-pprof"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--listen-metrics-urls") {
		t.Fatalf("--enable-pprof without a metrics listener: %v", err)
	}
	cfg, err := parseFlags([]string{"--enable-pprof", "--listen-metrics-urls=http://127.0.0.1:2381", "--range-max-bytes=1048576"}, io.Discard, io.Discard)
	if err != nil || !cfg.EnablePprof || cfg.ListenMetricsURLs[0] != "http://127.0.0.1:2381" || cfg.RangeMaxBytes != 1<<20 {
		t.Fatalf("cfg = %+v, %v", cfg, err)
	}
	if _, err := parseFlags([]string{"--range-max-bytes=10"}, io.Discard, io.Discard); err == nil {
		t.Fatal("a tiny --range-max-bytes was accepted")
	}
}

// TestParseFlagsWatchProgress: etcd's default interval, and a given one.
func TestParseFlagsWatchProgress(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard, io.Discard)
	if err != nil || cfg.WatchProgressNotifyInterval != 10*time.Minute {
		t.Fatalf("default: %v, %v", cfg.WatchProgressNotifyInterval, err)
	}
	cfg, err = parseFlags([]string{"--watch-progress-notify-interval=30s"}, io.Discard, io.Discard)
	if err != nil || cfg.WatchProgressNotifyInterval != 30*time.Second {
		t.Fatalf("30s: %v, %v", cfg.WatchProgressNotifyInterval, err)
	}
}

func TestGCPercentFor(t *testing.T) {
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, 200}, {8 << 20, 200}, {32 << 20, 200}, {64 << 20, 150}, {128 << 20, 125}, {320 << 20, 110}, {8 << 30, 100},
	} {
		if got := gcPercentFor(tc.live); got != tc.want {
			t.Errorf("live heap %d MiB: GOGC %d, want %d", tc.live>>20, got, tc.want)
		}
	}
}

func TestTuneGCLeavesGOGCAlone(t *testing.T) {
	t.Setenv("GOGC", "100")
	prev := debug.SetGCPercent(77)
	defer debug.SetGCPercent(prev)
	defer tuneGC()()
	if got := debug.SetGCPercent(77); got != 77 {
		t.Fatalf("with GOGC set the collector's target was changed to %d", got)
	}
}

// An empty GOGC means Go's default to the runtime, so tuneGC tunes.
func TestTuneGCTreatsEmptyGOGCAsUnset(t *testing.T) {
	t.Setenv("GOGC", "")
	prev := debug.SetGCPercent(77)
	defer debug.SetGCPercent(prev)
	defer tuneGC()()
	if got := debug.SetGCPercent(prev); got == 77 {
		t.Fatalf("with GOGC empty the collector's target was left at %d", got)
	}
}
