package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// list: load Objects objects of ValueSizeBytes under "l/", then time, one
// after the other, a paginated list (PageLimit per page, every page after
// the first at the first page's revision, as kube-apiserver pages), one
// RangeStream and one unpaginated Range of the whole prefix, and a watch of
// the prefix from the load's first revision until it has delivered every
// Put (a watcher catching up from history). With --server-pids it records
// the server's RSS after the load and its peak during each list.
func runList(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	keys := KeyGen{Prefix: "l/", SizeBytes: max(cfg.KeySizeBytes, minKeySize("l/", cfg.Objects)), Space: cfg.Objects, Sequential: true}
	vals := NewValueGen(cfg.ValueSizeBytes, cfg.Seed)
	var firstRev atomic.Int64 // the lowest revision of a Put of the load
	lr, err := e.measure(ctx, res, loop{name: "load", total: cfg.Objects, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			resp, err := c.cli.Put(ctx, keys.KeyAt(seq), vals.Value(c.rng))
			if err == nil {
				for rev := resp.Header.Revision; ; {
					first := firstRev.Load()
					if (first != 0 && first <= rev) || firstRev.CompareAndSwap(first, rev) {
						break
					}
				}
			}
			return outcome{op: "load-put", err: err}
		}})
	if err != nil || res.Unsupported != "" {
		return err
	}
	l := &ListResult{Objects: cfg.Objects, ObjectSizeBytes: cfg.ValueSizeBytes, LoadSeconds: lr.elapsed.Seconds()}
	res.List = l
	var sampler *procSampler
	if len(cfg.ServerPIDs) > 0 {
		if sampler, err = startProcSampler(cfg.ServerPIDs); err != nil {
			return err
		}
		defer sampler.finish(0)
		l.RSSAfterLoadBytes = sampler.resetPeak()
	}
	peak := func() int64 {
		if sampler == nil {
			return 0
		}
		p := sampler.peak()
		sampler.resetPeak()
		return p
	}
	cli := e.conns[0]
	rec := newRecorder()
	// A list is one request in res's breakdown; a failed one fails the run.
	listOp := func(name string, f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		d := time.Since(t0)
		rec.observe(name, d, err)
		return d, err
	}

	end := keys.PrefixEnd()
	d, err := listOp("paginated-list", func() error {
		key, rev := keys.Prefix, int64(0)
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(cfg.PageLimit)}
			if rev > 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			t0 := time.Now()
			resp, err := cli.Get(ctx, key, opts...)
			rec.observe("list-page", time.Since(t0), err)
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			l.Pages++
			l.PaginatedKeys += int64(len(resp.Kvs))
			if !resp.More || len(resp.Kvs) == 0 {
				return nil
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	})
	if err != nil {
		return fmt.Errorf("paginated list: %w", err)
	}
	l.PaginatedSeconds, l.RSSPeakPagedBytes = d.Seconds(), peak()

	// The stream goes before the one Range: the Range holds the whole
	// result in the server's memory, which the Go runtime keeps for
	// minutes after, and would hide what the stream itself costs.
	if sampler != nil {
		l.RSSBeforeStreamBytes = sampler.resetPeak()
	}
	d, err = listOp("range-stream", func() error {
		stream, err := cli.GetStream(ctx, keys.Prefix, clientv3.WithRange(end))
		if err != nil {
			return err
		}
		for chunk := range stream {
			if err := chunk.Err(); err != nil {
				return err
			}
			l.StreamChunks++
			l.StreamKeys += int64(len(chunk.Kvs))
		}
		return nil
	})
	if msg, ok := unsupported(err); ok {
		l.StreamUnsupported = "RangeStream: " + msg
		delete(rec.ops, "range-stream")
	} else if err != nil {
		return fmt.Errorf("range stream: %w", err)
	}
	l.StreamSeconds, l.RSSPeakStreamBytes = d.Seconds(), peak()

	d, err = listOp("range", func() error {
		resp, err := cli.Get(ctx, keys.Prefix, clientv3.WithRange(end))
		if err == nil {
			l.RangeKeys = int64(len(resp.Kvs))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("range: %w", err)
	}
	l.RangeSeconds, l.RSSPeakRangeBytes = d.Seconds(), peak()

	d, err = listOp("watch-catch-up", func() error {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range cli.Watch(wctx, keys.Prefix, clientv3.WithRange(end), clientv3.WithRev(firstRev.Load())) {
			if err := resp.Err(); err != nil {
				return err
			}
			l.CatchUpEvents += int64(len(resp.Events))
			if l.CatchUpEvents >= cfg.Objects {
				return nil
			}
		}
		return fmt.Errorf("the watch ended after %d events: %w", l.CatchUpEvents, ctx.Err())
	})
	if err != nil {
		return fmt.Errorf("watch catch-up: %w", err)
	}
	l.CatchUpSeconds = d.Seconds()
	res.fillOps(rec.ops)
	return nil
}

// fillOps adds the operations of ops to res.
func (r *Result) fillOps(ops map[string]*opRecorder) {
	for name, op := range ops {
		r.Operations[name] = &OpResult{Count: op.count, Errors: op.errors, Latency: op.hist.Summary()}
	}
}
