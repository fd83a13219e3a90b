package meta

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tesserakv/tessera/internal/stop"
)

// batchTimeout bounds one combined fetch.
const batchTimeout = 5 * time.Second

// revisionBatcher combines the callers waiting right now into one fetch of
// the sum of their counts and splits the result in their order. A caller
// asking for 0 revisions gets the first revision after everything handed out
// before its batch (Current subtracts one). It runs one
// fetch at a time: callers that arrive during a fetch go into the next one, so
// every caller's numbers are fetched after it asked.
type revisionBatcher struct {
	fetch   func(ctx context.Context, count int64) (first int64, err error)
	reqs    chan *revisionRequest
	stopper *stop.Stopper // owns loop
	// batches counts fetches, requests the callers they served.
	batches, requests atomic.Int64
}

type revisionRequest struct {
	count int64
	reply chan revisionReply // buffered, 1
}

type revisionReply struct {
	first int64
	err   error
}

func newRevisionBatcher(fetch func(ctx context.Context, count int64) (int64, error), stopper *stop.Stopper) *revisionBatcher {
	b := &revisionBatcher{fetch: fetch, reqs: make(chan *revisionRequest, 1024), stopper: stopper}
	_ = b.stopper.RunAsync(b.loop)
	return b
}

func (b *revisionBatcher) stop() { b.stopper.Stop() }

// get returns the first of count consecutive revisions.
func (b *revisionBatcher) get(ctx context.Context, count int64) (int64, error) {
	req := &revisionRequest{count: count, reply: make(chan revisionReply, 1)}
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-b.stopper.ShouldQuiesce():
		return 0, ErrStopped
	}
	select {
	case r := <-req.reply:
		return r.first, r.err
	case <-ctx.Done():
		// The numbers fetched for this caller, if any, become a gap.
		return 0, ctx.Err()
	case <-b.stopper.ShouldQuiesce():
		return 0, ErrStopped
	}
}

func (b *revisionBatcher) loop() {
	var batch []*revisionRequest
	for {
		batch = batch[:0]
		select {
		case <-b.stopper.ShouldQuiesce():
			return
		case req := <-b.reqs:
			batch = append(batch, req)
		}
	drain:
		for {
			select {
			case req := <-b.reqs:
				batch = append(batch, req)
			default:
				break drain
			}
		}
		var total int64
		for _, req := range batch {
			total += req.count
		}
		b.batches.Add(1)
		b.requests.Add(int64(len(batch)))
		// Stopping ends the fetch rather than waiting for its timeout.
		ctx, cancel := b.stopper.WithTimeout(batchTimeout)
		first, err := b.fetch(ctx, total)
		cancel()
		for _, req := range batch {
			req.reply <- revisionReply{first: first, err: err}
			first += req.count
		}
	}
}
