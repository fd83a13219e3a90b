package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// watchDrainTimeout is how long after the last write the watchers may take
// to deliver the events still owed, counted from the last event seen.
const watchDrainTimeout = 5 * time.Second

// watchSet is a set of watchers, each on one of a number of gRPC watch
// streams, recording when each event arrives.
type watchSet struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	received atomic.Int64
	watchers []*watcher
	errMu    sync.Mutex
	err      error // guarded by errMu: the first error a watcher saw
}

type watcher struct {
	arrivals []eventArrival // owned by the watcher's goroutine until wg.Wait
}

type eventArrival struct {
	rev int64
	at  time.Time
}

// watchStreamMetadata is an outgoing metadata key that puts a watcher on
// its own gRPC stream: clientv3 shares one stream among watches whose
// contexts carry the same metadata.
const watchStreamMetadata = "tessbench-watch-stream"

// startWatchersFor starts the watchers of a workload. When the target lacks
// Watch it records that in res and returns no watchers and no error (the
// workload ends there); any other failure is returned.
func (e *env) startWatchersFor(ctx context.Context, res *Result, prefixes []string, streams int) (*watchSet, error) {
	ws, err := e.startWatchers(ctx, prefixes, streams)
	if err != nil {
		if msg, ok := unsupported(err); ok {
			res.Unsupported = "Watch: " + msg
			return nil, nil
		}
		return nil, fmt.Errorf("starting watchers: %w", err)
	}
	return ws, nil
}

// Watch clients of the watch workload (Config.WatchClient).
const (
	WatchClientV3   = "clientv3"
	WatchClientGRPC = "grpc"
)

// startWatchers opens one watcher per prefix entry over streams streams,
// spread over the connections, with the configured client, and waits until
// every watch is created. If the target refuses, the returned error is the
// refusal.
func (e *env) startWatchers(ctx context.Context, prefixes []string, streams int) (*watchSet, error) {
	ctx, cancel := context.WithCancel(ctx)
	ws := &watchSet{cancel: cancel}
	created := make(chan error, len(prefixes))
	for range prefixes {
		ws.watchers = append(ws.watchers, &watcher{})
	}
	if e.cfg.WatchClient == WatchClientGRPC {
		e.startGRPCWatchers(ctx, ws, created, prefixes, streams)
	} else {
		e.startV3Watchers(ctx, ws, created, prefixes, streams)
	}
	for range prefixes {
		select {
		case err := <-created:
			if err != nil {
				ws.stop()
				return nil, err
			}
		case <-time.After(10 * time.Second):
			ws.stop()
			return nil, fmt.Errorf("watches not created within 10s")
		}
	}
	return ws, nil
}

// startV3Watchers watches through clientv3: one Watch call per watcher,
// each watcher's events coming through clientv3's channels.
func (e *env) startV3Watchers(ctx context.Context, ws *watchSet, created chan<- error, prefixes []string, streams int) {
	for i, prefix := range prefixes {
		stream := i % streams
		wctx := metadata.AppendToOutgoingContext(ctx, watchStreamMetadata, fmt.Sprint(stream))
		ch := e.conn(stream).Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		w := ws.watchers[i]
		ws.wg.Go(func() {
			first := true
			for resp := range ch {
				if err := resp.Err(); err != nil {
					if first {
						created <- err
						first = false
					}
					ws.setErr(err)
					return
				}
				if resp.Created && first {
					created <- nil
					first = false
				}
				w.record(resp.Events, time.Now())
				ws.received.Add(int64(len(resp.Events)))
			}
			if first {
				created <- fmt.Errorf("watch on %q closed before it was created", prefix)
			}
		})
	}
}

// startGRPCWatchers opens the Watch RPC's streams itself, creates each
// stream's watchers on it with watch IDs of its own choosing, and reads
// every stream in one goroutine.
func (e *env) startGRPCWatchers(ctx context.Context, ws *watchSet, created chan<- error, prefixes []string, streams int) {
	for stream := range streams {
		byID := map[int64]*watcher{}
		var reqs []*pb.WatchRequest
		for i := stream; i < len(prefixes); i += streams {
			id := int64(len(reqs) + 1) // 0 would ask the server to choose
			byID[id] = ws.watchers[i]
			reqs = append(reqs, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
				Key: []byte(prefixes[i]), RangeEnd: []byte(prefixEnd(prefixes[i])), WatchId: id,
			}}})
		}
		ws.wg.Go(func() {
			// Each watcher reports its creation once: nil when created, or
			// the error that ended the stream first.
			pending := len(reqs)
			fail := func(err error) {
				for ; pending > 0; pending-- {
					created <- err
				}
			}
			wc, err := pb.NewWatchClient(e.conn(stream).ActiveConnection()).Watch(ctx)
			if err != nil {
				fail(err)
				return
			}
			for _, req := range reqs {
				if err := wc.Send(req); err != nil {
					if errors.Is(err, io.EOF) {
						// The server ended the stream: its status comes
						// with Recv.
						_, err = wc.Recv()
					}
					fail(err)
					return
				}
			}
			for {
				resp, err := wc.Recv()
				if err != nil {
					fail(err)
					if ctx.Err() == nil {
						ws.setErr(err)
					}
					return
				}
				now := time.Now()
				switch {
				case resp.Created && pending > 0:
					pending--
					created <- nil
				case resp.Canceled:
					err := fmt.Errorf("watch %d canceled: %s", resp.WatchId, resp.CancelReason)
					fail(err)
					ws.setErr(err)
					return
				}
				if w := byID[resp.WatchId]; w != nil && len(resp.Events) > 0 {
					w.record(resp.Events, now)
					ws.received.Add(int64(len(resp.Events)))
				}
			}
		})
	}
}

// record notes the arrival of events at one time.
func (w *watcher) record(events []*mvccpb.Event, at time.Time) {
	for _, ev := range events {
		w.arrivals = append(w.arrivals, eventArrival{rev: ev.Kv.ModRevision, at: at})
	}
}

func (ws *watchSet) setErr(err error) {
	ws.errMu.Lock()
	defer ws.errMu.Unlock()
	if ws.err == nil {
		ws.err = err
	}
}

// drain waits until expected events have arrived, or until none has arrived
// for watchDrainTimeout.
func (ws *watchSet) drain(expected int64) {
	last, lastChange := ws.received.Load(), time.Now()
	for ws.received.Load() < expected && time.Since(lastChange) < watchDrainTimeout {
		time.Sleep(10 * time.Millisecond)
		if n := ws.received.Load(); n != last {
			last, lastChange = n, time.Now()
		}
	}
}

// stop closes the watches and waits for their goroutines.
func (ws *watchSet) stop() {
	ws.cancel()
	ws.wg.Wait()
}

// putTimes maps each successful Put's revision to when its response came.
type putTimes struct {
	mu sync.Mutex
	at map[int64]time.Time // guarded by mu
}

// eventLatencies joins event arrivals to put response times: the latency of
// an event is its arrival minus its Put's response, zero (and counted as
// early) when the event came first. Arrivals of revisions not in puts (other
// writers) are ignored.
func eventLatencies(puts map[int64]time.Time, watchers []*watcher) (hist *Histogram, matched, early int64) {
	hist = NewHistogram()
	for _, w := range watchers {
		for _, a := range w.arrivals {
			respAt, ok := puts[a.rev]
			if !ok {
				continue
			}
			matched++
			d := a.at.Sub(respAt)
			if d < 0 {
				early++
				d = 0
			}
			hist.Record(d)
		}
	}
	return hist, matched, early
}

// watch: Watchers watchers of the prefix "w/" over WatchStreams streams;
// the clients then Put keys under it and every watcher must see every
// Put. The latency reported is from a Put's response to each watcher's
// event; the Puts' own latency is under operations["put"].
func runWatch(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	prefixes := make([]string, cfg.Watchers)
	for i := range prefixes {
		prefixes[i] = "w/"
	}
	res.Watch = &WatchResult{Watchers: cfg.Watchers, Streams: cfg.WatchStreams}
	ws, err := e.startWatchersFor(ctx, res, prefixes, cfg.WatchStreams)
	if ws == nil {
		return err
	}
	defer ws.stop()
	keys := KeyGen{Prefix: "w/", SizeBytes: cfg.KeySizeBytes, Space: cfg.KeySpace, Sequential: cfg.SequentialKeys}
	vals := NewValueGen(cfg.ValueSizeBytes, cfg.Seed)
	puts := &putTimes{at: map[int64]time.Time{}}
	lr := e.run(ctx, loop{name: "watch", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			resp, err := c.cli.Put(ctx, keys.Key(seq, c.rng), vals.Value(c.rng))
			if err == nil {
				now := time.Now()
				puts.mu.Lock()
				puts.at[resp.Header.Revision] = now
				puts.mu.Unlock()
			}
			return outcome{op: "put", err: err}
		}})
	res.Watch.EventsExpected = lr.rec.count * int64(cfg.Watchers)
	ws.drain(res.Watch.EventsExpected)
	ws.stop()
	lr.rec.fill(res, lr.elapsed)
	hist, matched, early := eventLatencies(puts.at, ws.watchers)
	res.Latency = hist.Summary()
	res.Operations["event"] = &OpResult{Count: matched, Latency: res.Latency}
	res.Watch.EventsReceived, res.Watch.EarlyEvents = matched, early
	if ws.err != nil {
		res.ErrorSamples["watch: "+errorText(ws.err)]++
	}
	res.Unsupported = lr.unsupported
	return nil
}
