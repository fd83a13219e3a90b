package bench

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"
)

// workloadFunc runs one workload and fills res.
type workloadFunc func(ctx context.Context, e *env, res *Result) error

var workloads = map[string]workloadFunc{
	"put":      runPut,
	"range":    runRange,
	"txn-put":  runTxnPut,
	"txn-span": runTxnSpan,
	"watch":    runWatch,
	"lease":    runLease,
	"list":     runList,
	"k8s":      runK8s,
}

// Workloads lists the workload names.
func Workloads() []string {
	names := make([]string, 0, len(workloads))
	for n := range workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Run runs workload against cfg.Endpoints. progress, when not nil, gets a
// progress bar. A target that lacks an RPC the workload needs is not an
// error: the result's Unsupported says so.
func Run(ctx context.Context, workload string, cfg Config, progress io.Writer) (*Result, error) {
	run, ok := workloads[workload]
	if !ok {
		return nil, fmt.Errorf("unknown workload %q (have %v)", workload, Workloads())
	}
	if err := cfg.Validate(workload); err != nil {
		return nil, err
	}
	conns, err := dial(cfg)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	res := &Result{
		Workload:     workload,
		Case:         cfg.Case,
		Target:       cfg.Target,
		Topology:     cfg.Topology,
		Params:       cfg,
		Started:      time.Now().UTC().Format(time.RFC3339),
		ErrorSamples: map[string]int64{},
		Operations:   map[string]*OpResult{},
	}
	if res.Case == "" {
		res.Case = workload
	}
	e := &env{cfg: cfg, conns: conns, progress: progress}
	if err := run(ctx, e, res); err != nil {
		return nil, fmt.Errorf("%s: %w", workload, err)
	}
	return res, nil
}

// measure runs the measured loop of a workload with /proc sampling of the
// server around it, and fills res.
func (e *env) measure(ctx context.Context, res *Result, l loop) (loopResult, error) {
	var sampler *procSampler
	if len(e.cfg.ServerPIDs) > 0 {
		var err error
		if sampler, err = startProcSampler(e.cfg.ServerPIDs); err != nil {
			return loopResult{}, err
		}
	}
	lr := e.run(ctx, l)
	lr.rec.fill(res, lr.elapsed)
	if lr.unsupported != "" {
		res.Unsupported = lr.unsupported
	}
	if sampler != nil {
		st, err := sampler.finish(lr.rec.count)
		if err != nil {
			return lr, err
		}
		res.Server = st
	}
	return lr, nil
}

// preload writes n keys from keys with values from vals, unmeasured.
func (e *env) preload(ctx context.Context, label string, keys KeyGen, n int64, vals ValueGen) error {
	lr := e.run(ctx, loop{name: label, total: n, do: func(ctx context.Context, c *client, seq int64) outcome {
		_, err := c.cli.Put(ctx, keys.KeyAt(seq), vals.Value(c.rng))
		return outcome{err: err}
	}})
	if lr.rec.errors > 0 {
		return fmt.Errorf("preloading %d keys: %d failed, e.g. %v", n, lr.rec.errors, sortedKeys(lr.rec.errs)[0])
	}
	return nil
}
