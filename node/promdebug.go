package node

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/health/grpc_health_v1"
)

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
func (s *Node) registerDebugMetrics(reg *prometheus.Registry) {
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
	reg.MustRegister(d.splits, d.replicaChanges, d.peerRTT, debugCollector{s})
}

var (
	liveKeysDesc       = prometheus.NewDesc("etcd_debugging_mvcc_keys_total", "Live keys in this node's range replicas (recounted every minute while writes apply).", nil, nil)
	currentRevDesc     = prometheus.NewDesc("etcd_debugging_mvcc_current_revision", "The highest revision this node's range replicas have applied.", nil, nil)
	compactRevDesc     = prometheus.NewDesc("etcd_debugging_mvcc_compact_revision", "The highest compacted revision of this node's range replicas.", nil, nil)
	watchStreamsDesc   = prometheus.NewDesc("etcd_debugging_mvcc_watch_stream_total", "Open Watch streams on this node.", nil, nil)
	watchersDesc       = prometheus.NewDesc("etcd_debugging_mvcc_watcher_total", "Watches open on this node.", nil, nil)
	slowWatchersDesc   = prometheus.NewDesc("etcd_debugging_mvcc_slow_watcher_total", "Watches on this node catching up from history rather than fed live.", nil, nil)
	pendingEventsDesc  = prometheus.NewDesc("etcd_debugging_mvcc_pending_events_total", "Events the watch hub buffers for its live watches.", nil, nil)
	watchLagDesc       = prometheus.NewDesc("tessera_watch_hub_lag_revisions", "How many revisions the slowest live watch trails the newest closed revision.", nil, nil)
	closedLagDesc      = prometheus.NewDesc("tessera_closed_revision_lag_revisions", "How many revisions the lowest closed revision of the ranges the watch hub follows trails the highest.", nil, nil)
	oracleCallsDesc    = prometheus.NewDesc("tessera_oracle_calls_total", "Calls this node made to the revision oracle (the meta leader), each serving a batch of requests.", nil, nil)
	oracleRequestsDesc = prometheus.NewDesc("tessera_oracle_requests_total", "Requests for revisions (writes, reads, closings) this node's oracle calls served.", nil, nil)
)

// debugCollector reads, once per scrape, what several series share: the
// replicas' revisions, the watch hub's stats and the oracle's counts.
type debugCollector struct{ s *Node }

// Describe implements prometheus.Collector.
func (c debugCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{liveKeysDesc, currentRevDesc, compactRevDesc, watchStreamsDesc, watchersDesc,
		slowWatchersDesc, pendingEventsDesc, watchLagDesc, closedLagDesc, oracleCallsDesc, oracleRequestsDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c debugCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	rev, compacted := s.replicaRevisions()
	st := s.hub.Stats()
	calls, requests := s.oracle.Batches()
	gauge(liveKeysDesc, s.debug.liveKeys.Load())
	gauge(currentRevDesc, rev)
	gauge(compactRevDesc, compacted)
	gauge(watchStreamsDesc, int64(st.Streams))
	gauge(watchersDesc, int64(st.Watchers))
	gauge(slowWatchersDesc, int64(st.Unsynced))
	gauge(pendingEventsDesc, int64(st.BufferedEvents))
	gauge(watchLagDesc, st.WatcherLag)
	gauge(closedLagDesc, st.ClosedLag)
	ch <- prometheus.MustNewConstMetric(oracleCallsDesc, prometheus.CounterValue, float64(calls))
	ch <- prometheus.MustNewConstMetric(oracleRequestsDesc, prometheus.CounterValue, float64(requests))
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
