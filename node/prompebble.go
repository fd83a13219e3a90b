package node

import (
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// pebbleCollector exports Pebble's own metrics of the node's store, read
// from Pebble at each scrape.
type pebbleCollector struct {
	s *Node
}

// pebbleMetric is one exported Pebble figure.
type pebbleMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(m pebbleReading) float64
}

// pebbleReading is what one scrape read from Pebble.
type pebbleReading = *pebble.Metrics

var pebbleMetrics = func() []pebbleMetric {
	m := func(name, help string, kind prometheus.ValueType, value func(pebbleReading) float64) pebbleMetric {
		return pebbleMetric{desc: prometheus.NewDesc("tessera_pebble_"+name, help, nil, nil), kind: kind, value: value}
	}
	return []pebbleMetric{
		m("disk_space_bytes", "Pebble's space on disk, obsolete files included.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.DiskSpaceUsage()) }),
		m("read_amplification", "Pebble's read amplification (sublevels of L0 plus non-empty levels).", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.ReadAmp()) }),
		m("l0_sublevels", "Sublevels of Pebble's L0.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.Levels[0].Sublevels) }),
		m("l0_tables", "Sstables in Pebble's L0.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.Levels[0].TablesCount) }),
		m("compactions_total", "Pebble's compactions since the store opened.", prometheus.CounterValue, func(r pebbleReading) float64 { return float64(r.Compact.Count) }),
		m("compactions_in_progress", "Pebble's compactions running.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.Compact.NumInProgress) }),
		m("compaction_debt_bytes", "Pebble's estimate of the bytes to compact for a stable LSM.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.Compact.EstimatedDebt) }),
		m("flushes_total", "Pebble's memtable flushes since the store opened.", prometheus.CounterValue, func(r pebbleReading) float64 { return float64(r.Flush.Count) }),
		m("memtable_bytes", "Bytes of Pebble's memtables.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.MemTable.Size) }),
		m("block_cache_bytes", "Bytes in Pebble's block cache.", prometheus.GaugeValue, func(r pebbleReading) float64 { return float64(r.BlockCache.Size) }),
		m("block_cache_hits_total", "Pebble's block cache hits.", prometheus.CounterValue, func(r pebbleReading) float64 { return float64(r.BlockCache.Hits) }),
		m("block_cache_misses_total", "Pebble's block cache misses.", prometheus.CounterValue, func(r pebbleReading) float64 { return float64(r.BlockCache.Misses) }),
		m("wal_bytes_written_total", "Bytes Pebble wrote to its write-ahead log.", prometheus.CounterValue, func(r pebbleReading) float64 { return float64(r.WAL.BytesWritten) }),
	}
}()

// Describe implements prometheus.Collector.
func (c pebbleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range pebbleMetrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (c pebbleCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.s.store.PebbleMetrics()
	for _, m := range pebbleMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(r))
	}
}

// rangeCollector exports, at each scrape, a series per data range replica
// on the node: its size estimate, the requests per second the node routed
// to it, and whether this replica leads it.
type rangeCollector struct {
	s *Node
}

var (
	rangeSizeDesc   = prometheus.NewDesc("tessera_range_size_bytes", "Estimated bytes of a range's data on this node (its replica's view).", []string{"range_id"}, nil)
	rangeQPSDesc    = prometheus.NewDesc("tessera_range_qps", "Requests per second this node routed to a range over the last sampling window.", []string{"range_id"}, nil)
	rangeLeaderDesc = prometheus.NewDesc("tessera_range_is_leader", "Whether this node's replica leads the range (1) or not (0).", []string{"range_id"}, nil)
)

// Describe implements prometheus.Collector.
func (c rangeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rangeSizeDesc
	ch <- rangeQPSDesc
	ch <- rangeLeaderDesc
}

// Collect implements prometheus.Collector.
func (c rangeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.s.rangeList() {
		id := strconv.FormatUint(r.RangeID(), 10)
		if rsm := c.s.store.Range(r.RangeID()); rsm != nil {
			ch <- prometheus.MustNewConstMetric(rangeSizeDesc, prometheus.GaugeValue, float64(rsm.SizeBytes()), id)
		}
		ch <- prometheus.MustNewConstMetric(rangeQPSDesc, prometheus.GaugeValue, r.QPS(), id)
		ch <- prometheus.MustNewConstMetric(rangeLeaderDesc, prometheus.GaugeValue, boolean(r.IsLeader()), id)
	}
}
