package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"
)

// startMetrics serves /health, and /debug/pprof when enabled, on the
// --listen-metrics-urls (plain HTTP, as etcd's metrics listener).
func (s *Node) startMetrics() error {
	if len(s.cfg.ListenMetricsURLs) == 0 {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", s.serveHealth)
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

// healthTimeout bounds /health's read of the current revision.
const healthTimeout = 2 * time.Second

// serveHealth answers /health as etcd does, with its JSON: unhealthy while
// the NOSPACE alarm is raised, while this node knows no meta range leader
// (etcd's "RAFT NO LEADER"), or, unless ?serializable=true, when the
// current revision cannot be read within healthTimeout (etcd's linearizable
// "QGET ERROR"). Every node answers the same way, whatever ranges it
// holds.
func (s *Node) serveHealth(w http.ResponseWriter, r *http.Request) {
	reason := ""
	switch _, hasLeader := s.MetaLeader(); {
	case s.SpaceExceeded():
		reason = "ALARM NOSPACE"
	case !hasLeader:
		reason = "RAFT NO LEADER"
	case r.URL.Query().Get("serializable") != "true":
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if _, err := s.oracle.Current(ctx); err != nil {
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
