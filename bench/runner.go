package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// requestTimeout bounds one request so a stuck server ends a run with
// errors instead of hanging it.
const requestTimeout = 30 * time.Second

// env is what a workload runs with: the config and the connections.
type env struct {
	cfg      Config
	conns    []*clientv3.Client
	progress io.Writer // nil: no progress bar
}

func dial(cfg Config) ([]*clientv3.Client, error) {
	conns := make([]*clientv3.Client, 0, cfg.Conns)
	for range cfg.Conns {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   cfg.Endpoints,
			DialTimeout: cfg.DialTimeout,
			TLS:         cfg.TLS,
			Username:    cfg.User,
			Password:    cfg.Password,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("connecting to %v: %w", cfg.Endpoints, err)
		}
		conns = append(conns, cli)
	}
	return conns, nil
}

func closeAll(conns []*clientv3.Client) {
	for _, c := range conns {
		c.Close()
	}
}

// conn returns the connection client i uses.
func (e *env) conn(i int) *clientv3.Client { return e.conns[i%len(e.conns)] }

// outcome is how one request went.
type outcome struct {
	// op names the kind of request for the per-operation breakdown; "" when
	// the workload has one kind.
	op       string
	conflict bool
	err      error
}

// requestFunc sends request seq (0, 1, 2, … over all clients) from client c.
type requestFunc func(ctx context.Context, c *client, seq int64) outcome

// client is one concurrent requester. Everything in it is owned by its
// goroutine; the loop merges it at the end.
type client struct {
	id  int
	rng *rand.Rand
	cli *clientv3.Client
	rec recorder
}

// recorder accumulates latencies and errors, overall and per operation.
type recorder struct {
	hist      *Histogram
	count     int64
	errors    int64
	conflicts int64
	ops       map[string]*opRecorder
	errs      map[string]int64
}

type opRecorder struct {
	hist   *Histogram
	count  int64
	errors int64
}

func newRecorder() recorder {
	return recorder{hist: NewHistogram(), ops: map[string]*opRecorder{}, errs: map[string]int64{}}
}

// observe records one operation in the per-operation breakdown only (the
// parts of a composite request: a lease's grant, keep-alive and revoke).
func (r *recorder) observe(op string, d time.Duration, err error) {
	o := r.ops[op]
	if o == nil {
		o = &opRecorder{hist: NewHistogram()}
		r.ops[op] = o
	}
	if err != nil {
		o.errors++
		return
	}
	o.count++
	o.hist.Record(d)
}

// request records one whole request.
func (r *recorder) request(out outcome, d time.Duration) {
	if out.op != "" {
		r.observe(out.op, d, out.err)
	}
	if out.err != nil {
		r.errors++
		r.errs[errorText(out.err)]++
		return
	}
	r.count++
	if out.conflict {
		r.conflicts++
	}
	r.hist.Record(d)
}

func (r *recorder) merge(o *recorder) {
	r.hist.Merge(o.hist)
	r.count += o.count
	r.errors += o.errors
	r.conflicts += o.conflicts
	for name, op := range o.ops {
		mine := r.ops[name]
		if mine == nil {
			mine = &opRecorder{hist: NewHistogram()}
			r.ops[name] = mine
		}
		mine.hist.Merge(op.hist)
		mine.count += op.count
		mine.errors += op.errors
	}
	for msg, n := range o.errs {
		r.errs[msg] += n
	}
}

// fill copies the recorder's numbers into res.
func (r *recorder) fill(res *Result, elapsed time.Duration) {
	res.Count, res.Errors, res.Conflicts = r.count, r.errors, r.conflicts
	res.ErrorSamples = topErrors(r.errs, maxErrorSamples)
	res.DurationSeconds = elapsed.Seconds()
	if elapsed > 0 {
		res.Throughput = float64(r.count) / elapsed.Seconds()
	}
	res.Latency = r.hist.Summary()
	res.Operations = map[string]*OpResult{}
	for name, op := range r.ops {
		res.Operations[name] = &OpResult{Count: op.count, Errors: op.errors, Latency: op.hist.Summary()}
	}
}

const maxErrorSamples = 5

// topErrors keeps the n most frequent error messages.
func topErrors(errs map[string]int64, n int) map[string]int64 {
	out := map[string]int64{}
	for range n {
		best, bestCount := "", int64(0)
		for msg, c := range errs {
			if _, taken := out[msg]; !taken && (c > bestCount || (c == bestCount && msg < best)) {
				best, bestCount = msg, c
			}
		}
		if bestCount == 0 {
			break
		}
		out[best] = bestCount
	}
	return out
}

func errorText(err error) string {
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return err.Error()
}

// unsupported reports whether err says the target lacks the RPC, and how.
func unsupported(err error) (string, bool) {
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unimplemented {
		return s.Message(), true
	}
	return "", false
}

// loop is one run of a request function by every client.
type loop struct {
	name     string // progress label
	total    int64  // requests; 0 = until duration
	duration time.Duration
	rate     float64
	do       requestFunc
}

// loopResult is what a loop measured.
type loopResult struct {
	rec         recorder
	elapsed     time.Duration
	unsupported string
}

// run sends requests until total are sent or duration has passed, then
// waits for those in flight. A request that gets Unimplemented stops the
// loop: the target lacks the workload's RPC.
func (e *env) run(ctx context.Context, l loop) loopResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next        atomic.Int64
		done        atomic.Int64
		unsupportMu sync.Mutex
		unsupportOf string
	)
	start := time.Now()
	var deadline time.Time
	if l.duration > 0 {
		deadline = start.Add(l.duration)
	}
	stopProgress := e.startProgress(l.name, l.total, l.duration, start, &done)
	clients := make([]*client, e.cfg.Clients)
	var wg sync.WaitGroup
	for i := range clients {
		c := &client{id: i, rng: rand.New(rand.NewPCG(e.cfg.Seed, uint64(i))), cli: e.conn(i), rec: newRecorder()}
		clients[i] = c
		wg.Go(func() {
			for ctx.Err() == nil {
				seq := next.Add(1) - 1
				if l.total > 0 && seq >= l.total {
					return
				}
				at := start.Add(scheduledOffset(seq, l.rate))
				if !deadline.IsZero() && !at.Before(deadline) {
					return
				}
				if wait := time.Until(at); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				}
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return
				}
				reqCtx, reqCancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
				t0 := time.Now()
				out := l.do(reqCtx, c, seq)
				c.rec.request(out, time.Since(t0))
				reqCancel()
				done.Add(1)
				if msg, ok := unsupported(out.err); ok {
					unsupportMu.Lock()
					unsupportOf = msg
					unsupportMu.Unlock()
					cancel()
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	res := loopResult{rec: newRecorder(), elapsed: elapsed, unsupported: unsupportOf}
	for _, c := range clients {
		res.rec.merge(&c.rec)
	}
	return res
}
