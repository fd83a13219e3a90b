package bench

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

const progressEvery = 200 * time.Millisecond

// startProgress draws a one-line progress bar on e.progress until the
// returned stop is called; it draws nothing when e.progress is nil.
func (e *env) startProgress(label string, total int64, duration time.Duration, start time.Time, done *atomic.Int64) (stop func()) {
	if e.progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				fmt.Fprintf(e.progress, "\r%s\r", strings.Repeat(" ", 79))
				return
			case <-t.C:
				fmt.Fprintf(e.progress, "\r%s", progressLine(label, done.Load(), total, time.Since(start), duration))
			}
		}
	}()
	return func() {
		close(quit)
		<-finished
	}
}

// progressLine renders the bar: by requests when total is known, by time
// otherwise.
func progressLine(label string, done, total int64, elapsed, duration time.Duration) string {
	const width = 30
	var frac float64
	switch {
	case total > 0:
		frac = float64(done) / float64(total)
	case duration > 0:
		frac = elapsed.Seconds() / duration.Seconds()
	}
	frac = min(max(frac, 0), 1)
	filled := int(frac * width)
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed.Seconds()
	}
	return fmt.Sprintf("%-10s [%s%s] %3.0f%% %d req %.0f/s", label, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), frac*100, done, rate)
}
