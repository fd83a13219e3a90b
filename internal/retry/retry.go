// Package retry is how Tessera tries an operation again: one Policy type
// with a time budget and growing pauses. Writes are retried at one layer
// only, the router, under Writes; the layers below it try once and say
// whether trying again is safe.
package retry

import (
	"context"
	"time"
)

// Policy bounds the attempts of an operation.
type Policy struct {
	// Budget is the time from the first attempt after which no new attempt
	// starts.
	Budget time.Duration
	// Step is the pause after the first attempt; each later pause is one
	// Step longer, up to MaxPause.
	Step     time.Duration
	MaxPause time.Duration
}

// Writes is the policy of the router's write retries: long enough for a range
// that lost its leader, or one a split has just made, to elect one (several
// election timeouts).
var Writes = Policy{Budget: 5 * time.Second, Step: 25 * time.Millisecond, MaxPause: 250 * time.Millisecond}

// Do calls attempt until it reports that trying again would not help (again
// false), the budget is spent, ctx ends or quiesce closes, and returns
// attempt's last error. A pause cut short by ctx returns ctx's error; one
// cut short by quiesce, the last error.
func (p Policy) Do(ctx context.Context, quiesce <-chan struct{}, attempt func() (again bool, err error)) error {
	deadline := time.Now().Add(p.Budget)
	for n := 1; ; n++ {
		again, err := attempt()
		if !again || !time.Now().Before(deadline) {
			return err
		}
		pause := time.NewTimer(min(time.Duration(n)*p.Step, p.MaxPause))
		select {
		case <-pause.C:
		case <-ctx.Done():
			pause.Stop()
			return ctx.Err()
		case <-quiesce:
			pause.Stop()
			return err
		}
	}
}
