package bench

import "time"

// scheduledOffset is when request n (counted from 0) may start, measured from
// the start of the run, under a limit of ratePerSecond requests per second
// over all clients; 0 means no limit. The schedule is fixed in advance
// (request n at n/rate), so a slow response does not lower the offered rate
// of the requests that follow it.
func scheduledOffset(n int64, ratePerSecond float64) time.Duration {
	if ratePerSecond <= 0 {
		return 0
	}
	return time.Duration(float64(n) / ratePerSecond * float64(time.Second))
}
