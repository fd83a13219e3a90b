package node

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tesserakv/tessera/watchhub"
)

type hubStats = watchhub.Stats

// More of the node's metrics: etcd's etcd_debugging_mvcc_* and peer
// round-trip series, the watch hub's, and counts of splits, replica
// changes and oracle calls.

const (
	// liveKeysInterval is how often the node recounts its live keys, when
	// anything applied since the last count.
	liveKeysInterval = time.Minute
	// peerProbeInterval is how often the node times a round trip to every
	// other node (etcd probes its peers every few seconds).
	peerProbeInterval = 5 * time.Second
	peerProbeTimeout  = 2 * time.Second
)

// debugMetrics are the node's series that are fed rather than read.
type debugMetrics struct {
	liveKeys       atomic.Int64
	splits         prometheus.Counter
	replicaChanges *prometheus.CounterVec
	peerRTT        *prometheus.HistogramVec
}

// registerDebugMetrics adds the series of this file to reg.
func (s *Node) registerDebugMetrics(reg *prometheus.Registry, gauge func(name, help string, f func() float64)) {
	d := &s.debug
	d.splits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tessera_range_splits_total", Help: "Splits applied by this node's range replicas.",
	})
	d.replicaChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tessera_replica_changes_total", Help: "Replicas this node, leading their range, added (op=add) or removed (op=remove).",
	}, []string{"op"})
	d.peerRTT = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "etcd_network_peer_round_trip_time_seconds",
		Help:    "Round-trip times of a gRPC health check to each other node (To: its ID in hex), every few seconds.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"To"})
	reg.MustRegister(d.splits, d.replicaChanges, d.peerRTT)
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge("etcd_debugging_mvcc_keys_total", "Live keys in this node's range replicas (recounted every minute while writes apply).", func() float64 {
		return float64(d.liveKeys.Load())
	})
	gauge("etcd_debugging_mvcc_current_revision", "The highest revision this node's range replicas have applied.", func() float64 {
		rev, _ := s.replicaRevisions()
		return float64(rev)
	})
	gauge("etcd_debugging_mvcc_compact_revision", "The highest compacted revision of this node's range replicas.", func() float64 {
		_, compacted := s.replicaRevisions()
		return float64(compacted)
	})
	hub := func(f func(st hubStats) float64) func() float64 {
		return func() float64 { return f(s.hub.Stats()) }
	}
	gauge("etcd_debugging_mvcc_watch_stream_total", "Open Watch streams on this node.", hub(func(st hubStats) float64 { return float64(st.Streams) }))
	gauge("etcd_debugging_mvcc_watcher_total", "Watches open on this node.", hub(func(st hubStats) float64 { return float64(st.Watchers) }))
	gauge("etcd_debugging_mvcc_slow_watcher_total", "Watches on this node catching up from history rather than fed live.", hub(func(st hubStats) float64 { return float64(st.Unsynced) }))
	gauge("etcd_debugging_mvcc_pending_events_total", "Events the watch hub buffers for its live watches.", hub(func(st hubStats) float64 { return float64(st.BufferedEvents) }))
	gauge("tessera_watch_hub_lag_revisions", "How many revisions the slowest live watch trails the newest closed revision.", hub(func(st hubStats) float64 { return float64(st.WatcherLag) }))
	gauge("tessera_closed_revision_lag_revisions", "How many revisions the lowest closed revision of the ranges the watch hub follows trails the highest.", hub(func(st hubStats) float64 { return float64(st.ClosedLag) }))
	counter("tessera_oracle_calls_total", "Calls this node made to the revision oracle (the meta leader), each serving a batch of requests.", func() float64 {
		calls, _ := s.oracle.Batches()
		return float64(calls)
	})
	counter("tessera_oracle_requests_total", "Requests for revisions (writes, reads, closings) this node's oracle calls served.", func() float64 {
		_, requests := s.oracle.Batches()
		return float64(requests)
	})
}

// replicaRevisions returns the highest applied and compacted revisions of
// the node's range replicas.
func (s *Node) replicaRevisions() (rev, compacted int64) {
	for _, r := range s.rangeList() {
		rsm := s.store.Range(r.RangeID())
		if rsm == nil {
			continue
		}
		v, err := rsm.View()
		if err != nil {
			continue
		}
		rev, compacted = max(rev, v.Revision()), max(compacted, v.CompactRevision())
		v.Close()
	}
	return rev, compacted
}

// countLiveKeys recounts the node's live keys now and then, while writes
// apply.
func (s *Node) countLiveKeys() {
	last := -1.0
	count := func(time.Time) {
		if applied := s.appliedIndexes(); applied != last {
			if n, err := s.store.CountLiveKeys(); err == nil {
				s.debug.liveKeys.Store(n)
				last = applied
			}
		}
	}
	_ = s.stopper.RunAsync(func() { count(time.Now()) })
	_ = s.stopper.Every(knobOr(s.cfg.Knobs.LiveKeysInterval, liveKeysInterval), count)
}

// probePeers times a health check to every other registered node, every
// peerProbeInterval; a node that does not answer is left out, as etcd's
// prober leaves out a peer it cannot reach.
func (s *Node) probePeers() {
	_ = s.stopper.Every(peerProbeInterval, func(time.Time) {
		ctx, cancel := s.stopper.WithTimeout(peerProbeTimeout)
		nodes, err := s.directory.Nodes(ctx)
		cancel()
		if err != nil {
			return
		}
		for _, n := range nodes {
			if n.NodeId == s.replicaID {
				continue
			}
			s.probePeer(n.NodeId)
		}
	})
}

// probePeer times one health check to a node.
func (s *Node) probePeer(id uint64) {
	ctx, cancel := s.stopper.WithTimeout(peerProbeTimeout)
	defer cancel()
	cc, err := s.directory.Conn(ctx, id)
	if err != nil {
		return
	}
	start := time.Now()
	if _, err := grpc_health_v1.NewHealthClient(cc).Check(ctx, &grpc_health_v1.HealthCheckRequest{}); err != nil {
		return
	}
	s.debug.peerRTT.WithLabelValues(strconv.FormatUint(id, 16)).Observe(time.Since(start).Seconds())
}
