package bench

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to a minute with three
// significant digits; longer ones are recorded as a minute.
const (
	histLowestMicros  = 1
	histHighestMicros = int64(time.Minute / time.Microsecond)
	histSigFigs       = 3
)

// Histogram is a latency histogram. Not safe for concurrent use: each client
// records into its own and they are merged at the end.
type Histogram struct {
	h *hdrhistogram.Histogram
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(histLowestMicros, histHighestMicros, histSigFigs)}
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	us := min(max(d.Microseconds(), histLowestMicros), histHighestMicros)
	_ = h.h.RecordValue(us) // in range by construction
}

// Merge adds every value of other.
func (h *Histogram) Merge(other *Histogram) { h.h.Merge(other.h) }

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Summary returns the percentiles in milliseconds.
func (h *Histogram) Summary() LatencyMs {
	if h.h.TotalCount() == 0 {
		return LatencyMs{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return LatencyMs{
		Mean: h.h.Mean() / 1000,
		P50:  ms(h.h.ValueAtQuantile(50)),
		P90:  ms(h.h.ValueAtQuantile(90)),
		P99:  ms(h.h.ValueAtQuantile(99)),
		P999: ms(h.h.ValueAtQuantile(99.9)),
		Max:  ms(h.h.Max()),
	}
}

// LatencyMs holds latency percentiles in milliseconds; all zero when nothing
// was recorded.
type LatencyMs struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}
