package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// startMetrics serves /health, /livez, /readyz, and /debug/pprof when
// enabled, on the --listen-metrics-urls (HTTP, or HTTPS with the client
// certificate, as etcd's metrics listener).
func (s *Node) startMetrics() error {
	if len(s.cfg.ListenMetricsURLs) == 0 {
		return nil
	}
	mux := http.NewServeMux()
	s.HandleHTTP(mux)
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for _, u := range s.cfg.ListenMetricsURLs {
		hp, _ := hostPortOf(u)
		ln, err := net.Listen("tcp", hp)
		if err != nil {
			return fmt.Errorf("--listen-metrics-urls: %w", err)
		}
		if IsHTTPS(u) {
			// With the client URLs' certificate, as etcd's.
			cfg, err := s.cfg.ClientTLS.ServerConfig("http/1.1")
			if err != nil {
				_ = ln.Close()
				return fmt.Errorf("--listen-metrics-urls: %w", err)
			}
			ln = tls.NewListener(ln, cfg)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		s.goTask(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Warn("metrics listener stopped", "err", err)
			}
		})
		s.goTask(func() {
			<-s.stopper.ShouldQuiesce()
			_ = srv.Close()
		})
	}
	return nil
}

// healthTimeout bounds the reads of /health, /livez and /readyz.
const healthTimeout = 2 * time.Second

// HandleHTTP adds etcd's HTTP endpoints to mux: /health, /livez and
// /readyz as etcd 3.7 has them, and /metrics. The client URLs serve them
// beside gRPC, and so do the metrics URLs.
func (s *Node) HandleHTTP(mux *http.ServeMux) {
	s.handleMetrics(mux)
	mux.HandleFunc("/health", s.serveHealth)
	serializable := healthCheck{"serializable_read", func(ctx context.Context) error { return s.healthRead(ctx, true) }}
	linearizable := healthCheck{"linearizable_read", func(ctx context.Context) error { return s.healthRead(ctx, false) }}
	// No corruption check runs; etcd's readyz lists it.
	corruption := healthCheck{"data_corruption", func(context.Context) error { return nil }}
	// Not ready, but live, while a snapshot is being restored.
	restored := healthCheck{"snapshot_restored", func(context.Context) error {
		if s.Restoring() {
			return ErrRestoring
		}
		return nil
	}}
	mux.HandleFunc("/livez", serveChecks("livez", serializable))
	mux.HandleFunc("/readyz", serveChecks("readyz", corruption, restored, serializable, linearizable))
}

// healthRead reads one key, as etcd's checks do.
func (s *Node) healthRead(ctx context.Context, serializable bool) error {
	_, err := s.router.Range(ctx, &pb.RangeRequest{Key: []byte("health"), Serializable: serializable})
	return err
}

// healthCheck is one named check of /livez or /readyz.
type healthCheck struct {
	name string
	run  func(context.Context) error
}

// serveChecks answers as Kubernetes' and etcd's livez and readyz: "ok"
// when every check passes; with ?verbose, or when one fails (503), a line
// per check ("[+]name ok", "[-]name failed: reason") and a verdict.
// ?exclude=name skips a check.
func serveChecks(kind string, checks ...healthCheck) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		excluded := r.URL.Query()["exclude"]
		var out strings.Builder
		failed := false
		for _, c := range checks {
			if slices.Contains(excluded, c.name) {
				fmt.Fprintf(&out, "[+]%s excluded: ok\n", c.name)
				continue
			}
			if err := c.run(ctx); err != nil {
				failed = true
				fmt.Fprintf(&out, "[-]%s failed: %v\n", c.name, err)
				continue
			}
			fmt.Fprintf(&out, "[+]%s ok\n", c.name)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		switch _, verbose := r.URL.Query()["verbose"]; {
		case failed:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s%s check failed\n", out.String(), kind)
		case verbose:
			fmt.Fprintf(w, "%s%s check passed\n", out.String(), kind)
		default:
			fmt.Fprint(w, "ok")
		}
	}
}

// serveHealth answers /health as etcd does, with its JSON: unhealthy while
// the NOSPACE alarm is raised, while this node knows no meta range leader
// (etcd's "RAFT NO LEADER"), or, unless ?serializable=true, when a
// linearizable read fails within healthTimeout (etcd's "QGET ERROR"). Every node answers the same way, whatever ranges it
// holds.
func (s *Node) serveHealth(w http.ResponseWriter, r *http.Request) {
	reason := ""
	switch _, hasLeader := s.MetaLeader(); {
	case s.SpaceExceeded():
		reason = "ALARM NOSPACE"
	case s.Restoring():
		reason = "RESTORING SNAPSHOT"
	case !hasLeader:
		reason = "RAFT NO LEADER"
	case r.URL.Query().Get("serializable") != "true":
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if err := s.healthRead(ctx, false); err != nil {
			reason = "QGET ERROR: " + err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}{Health: strconv.FormatBool(reason == ""), Reason: reason})
}
