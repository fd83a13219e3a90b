package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startMetrics serves /health, and /debug/pprof when enabled, on the
// --listen-metrics-urls (plain HTTP, as etcd's metrics listener).
func (s *Node) startMetrics() error {
	if len(s.cfg.ListenMetricsURLs) == 0 {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		if s.leadsHomeRange() || s.rangeByID(firstRangeID) != nil {
			fmt.Fprintln(w, `{"health":"true"}`)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, `{"health":"false"}`)
	})
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
