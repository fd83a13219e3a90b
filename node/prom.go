package node

import (
	"net/http"
	"sync"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/raftio"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"

	"github.com/tesserakv/tessera/meta"
)

// APIVersion is the etcd API level Tessera implements. kube-apiserver reads it
// from Status and turns off consistent and streaming lists below 3.5.13.
const APIVersion = "3.7.3"

// Prometheus metrics (served at /metrics on the client and metrics URLs):
// etcd's names where dashboards and alerts look for them, with Tessera's
// meaning given in each help text, and Tessera's own under tessera_. Each
// node has a registry of its own (tests run several nodes in one process).

// raftEvents is Dragonboat's RaftEventListener: it counts leader changes
// (called on Dragonboat's goroutines, so it only counts).
type raftEvents struct {
	mu      sync.Mutex
	leaders map[uint64]uint64 // the last leader seen of each range

	metaChanges  prometheus.Counter
	rangeChanges prometheus.Counter
}

// LeaderUpdated implements raftio.IRaftEventListener.
func (e *raftEvents) LeaderUpdated(info raftio.LeaderInfo) {
	if info.LeaderID == 0 {
		return
	}
	e.mu.Lock()
	changed := e.leaders[info.ShardID] != info.LeaderID
	e.leaders[info.ShardID] = info.LeaderID
	e.mu.Unlock()
	if !changed {
		return
	}
	if info.ShardID == meta.RangeID {
		e.metaChanges.Inc()
	} else {
		e.rangeChanges.Inc()
	}
}

// newMetrics makes the node's registry and the counters Raft events feed.
// Nothing scrapes it before Start has opened the store and the meta range.
func (s *Node) newMetrics() {
	s.events = &raftEvents{
		leaders: map[uint64]uint64{},
		metaChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_server_leader_changes_seen_total",
			Help: "The number of leader changes of the meta range (the leader Status names) seen by this node.",
		}),
		rangeChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tessera_range_leader_changes_seen_total",
			Help: "The number of leader changes of data ranges seen by this node's replicas.",
		}),
	}
	s.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "etcd_disk_backend_commit_duration_seconds",
		Help:    "How long each applied batch of a range took to commit to the node's Pebble (not synced: the Raft log is).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		s.commitSeconds,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.events.metaChanges,
		s.events.rangeChanges,
		pebbleCollector{s},
		rangeCollector{s},
	)
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	s.registerDebugMetrics(reg)
	version := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "etcd_server_version", Help: "Which etcd version the server speaks (label server_version).",
	}, []string{"server_version"})
	version.WithLabelValues(APIVersion).Set(1)
	reg.MustRegister(version)
	gauge("etcd_server_has_leader", "Whether this node knows a leader of the meta range (1) or not (0).", func() float64 {
		_, _, ok := s.meta.Leader()
		return boolean(ok)
	})
	gauge("etcd_server_is_leader", "Whether this node leads the meta range (1) or not (0).", func() float64 {
		leader, _, ok := s.meta.Leader()
		return boolean(ok && leader == s.replicaID)
	})
	gauge("etcd_server_proposals_committed_total", "The sum of the applied Raft indexes of this node's data range replicas (Tessera does not track committed indexes apart).", s.appliedIndexes)
	gauge("etcd_server_proposals_applied_total", "The sum of the applied Raft indexes of this node's data range replicas.", s.appliedIndexes)
	gauge("etcd_server_proposals_pending", "Writes this node's range replicas have proposed and not yet applied.", func() float64 {
		n := 0
		for _, r := range s.rangeList() {
			n += r.InFlight()
		}
		return float64(n)
	})
	counter("etcd_server_proposals_failed_total", "Writes this node's range replicas proposed that failed other than by the request's own error (timeouts, lost leaderships), since their replicas started here.", func() float64 {
		var n int64
		for _, r := range s.rangeList() {
			n += r.ProposalsFailed()
		}
		return float64(n)
	})
	dbSize := func() float64 { return float64(s.store.DiskSizeBytes()) }
	gauge("etcd_mvcc_db_total_size_in_bytes", "The node's Pebble size on disk.", dbSize)
	gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "The node's Pebble size on disk.", dbSize)
	gauge("etcd_server_quota_backend_bytes", "The node's --quota-backend-bytes.", func() float64 { return float64(s.cfg.QuotaBackendBytes) })
	gauge("tessera_ranges", "Data range replicas on this node.", func() float64 { return float64(len(s.rangeList())) })
	gauge("tessera_range_leaders", "Data ranges this node leads.", func() float64 {
		n := 0
		for _, r := range s.rangeList() {
			if r.IsLeader() {
				n++
			}
		}
		return float64(n)
	})
	s.registry = reg
}

// boolean is a gauge's value for b.
func boolean(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// appliedIndexes sums the applied indexes of the node's data replicas.
func (s *Node) appliedIndexes() float64 {
	var sum uint64
	for _, r := range s.rangeList() {
		if rsm := s.store.Range(r.RangeID()); rsm != nil {
			sum += rsm.AppliedIndex()
		}
	}
	return float64(sum)
}

// Registerer is the node's Prometheus registry, for the series its
// servers add.
func (s *Node) Registerer() prometheus.Registerer { return s.registry }

// handleMetrics adds /metrics to mux: the node's registry in Prometheus'
// text format, then Dragonboat's own series (dragonboat_*, from its
// process-wide set: a process running several nodes, as tests do, shows
// every node's replicas there, each under its replica ID).
func (s *Node) handleMetrics(mux *http.ServeMux) {
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		families, err := s.registry.Gather()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		w.Header().Set("Content-Type", string(format))
		enc := expfmt.NewEncoder(w, format)
		for _, mf := range families {
			if err := enc.Encode(mf); err != nil {
				return
			}
		}
		dragonboat.WriteHealthMetrics(w)
	})
}
