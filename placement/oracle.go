package placement

import (
	"context"
	"sync/atomic"
)

// LocalOracle hands out strictly increasing revisions from an in-memory counter.
//
// It is correct only while one replica at a time assigns revisions for the whole
// keyspace and calls Observe with everything already written before it assigns
// again (the single-range leader does so after its leadership barrier). It never
// prefetches: each Next returns a number taken after the call began.
type LocalOracle struct {
	// last is the highest revision handed out or observed.
	last atomic.Int64
}

// NewLocalOracle returns an oracle whose first revision is above floor.
func NewLocalOracle(floor int64) *LocalOracle {
	o := &LocalOracle{}
	o.last.Store(floor)
	return o
}

// Next returns a revision larger than every revision handed out or observed
// before the call.
func (o *LocalOracle) Next(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return o.last.Add(1), nil
}

// Observe raises the counter to at least rev, so later revisions exceed it.
func (o *LocalOracle) Observe(rev int64) {
	for {
		cur := o.last.Load()
		if rev <= cur || o.last.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// NextN returns the first of count consecutive revisions, all above every
// revision handed out or observed before the call.
func (o *LocalOracle) NextN(ctx context.Context, count int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return o.last.Add(count) - count + 1, nil
}
