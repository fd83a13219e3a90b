package bench

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// put: Puts of ValueSizeBytes under keys "p/…", sequential or random in
// KeySpace.
func runPut(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	keys := KeyGen{Prefix: "p/", SizeBytes: cfg.KeySizeBytes, Space: cfg.KeySpace, Sequential: cfg.SequentialKeys}
	vals := NewValueGen(cfg.ValueSizeBytes, cfg.Seed)
	_, err := e.measure(ctx, res, loop{name: "put", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			_, err := c.cli.Put(ctx, keys.Key(seq, c.rng), vals.Value(c.rng))
			return outcome{err: err}
		}})
	return err
}

// range: after writing KeySpace keys "r/…", Gets of one key (random or
// sequential) or, with RangePrefix, of the whole prefix (up to RangeLimit
// keys), linearizable or serializable.
func runRange(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	keys := KeyGen{Prefix: "r/", SizeBytes: cfg.KeySizeBytes, Space: max(cfg.KeySpace, 1), Sequential: cfg.SequentialKeys}
	if err := e.preload(ctx, "preload", keys, keys.Space, NewValueGen(cfg.ValueSizeBytes, cfg.Seed)); err != nil {
		return err
	}
	var opts []clientv3.OpOption
	if cfg.Consistency == "s" {
		opts = append(opts, clientv3.WithSerializable())
	}
	if cfg.RangePrefix {
		opts = append(opts, clientv3.WithRange(keys.PrefixEnd()))
		if cfg.RangeLimit > 0 {
			opts = append(opts, clientv3.WithLimit(cfg.RangeLimit))
		}
	}
	_, err := e.measure(ctx, res, loop{name: "range", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			key := keys.Prefix
			if !cfg.RangePrefix {
				key = keys.Key(seq, c.rng)
			}
			_, err := c.cli.Get(ctx, key, opts...)
			return outcome{err: err}
		}})
	return err
}

// casState is one client's belief about the mod revisions of the keys it
// writes by compare-and-swap, as kube-apiserver keeps resourceVersions. A
// key it has not seen is believed absent (mod revision 0).
type casState struct {
	modRev map[string]int64
}

func newCASState() *casState { return &casState{modRev: map[string]int64{}} }

// txn builds the compare-and-swap of value into key: put if the key's
// mod_revision is still the one believed, else read it.
func (s *casState) txn(txn clientv3.Txn, key, value string) clientv3.Txn {
	return txn.If(clientv3.Compare(clientv3.ModRevision(key), "=", s.modRev[key])).
		Then(clientv3.OpPut(key, value)).
		Else(clientv3.OpGet(key))
}

// apply learns from the Txn's response and reports whether the compare
// failed: on success the key now has the Txn's revision; on failure the
// else-branch read tells its current one (0 if it is gone).
func (s *casState) apply(key string, resp *clientv3.TxnResponse) (conflict bool) {
	if resp.Succeeded {
		s.modRev[key] = resp.Header.GetRevision()
		return false
	}
	s.modRev[key] = 0
	if len(resp.Responses) == 1 {
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
			s.modRev[key] = kvs[0].ModRevision
		}
	}
	return true
}

// ownedIndex moves key number n to the nearest key number owned by client
// id of clients (those equal to id modulo clients), wrapping into the key
// space when that is past its end (and sharing keys when there are more
// clients than keys). space 0 means unbounded.
func ownedIndex(n int64, id, clients int, space int64) int64 {
	owned := n - n%int64(clients) + int64(id)
	if space > 0 && owned >= space {
		owned = int64(id) % space
	}
	return owned
}

// txn-put: compare-and-swap Txns on mod_revision over KeySpace keys "t/…".
// Each client writes its own share of the keys (key n belongs to client n
// mod clients), as controllers write their own objects, so it usually
// knows the revision to compare against. A conflict (the key was written by
// someone else: a client sharing it, or an earlier run) counts as a
// completed request and teaches the client the key's current revision.
func runTxnPut(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	keys := KeyGen{Prefix: "t/", SizeBytes: cfg.KeySizeBytes, Space: cfg.KeySpace, Sequential: cfg.SequentialKeys}
	vals := NewValueGen(cfg.ValueSizeBytes, cfg.Seed)
	states := make([]*casState, cfg.Clients)
	for i := range states {
		states[i] = newCASState()
	}
	_, err := e.measure(ctx, res, loop{name: "txn-put", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			key := keys.KeyAt(ownedIndex(keys.Index(seq, c.rng), c.id, cfg.Clients, keys.Space))
			st := states[c.id]
			resp, err := st.txn(c.cli.Txn(ctx), key, vals.Value(c.rng)).Commit()
			if err != nil {
				return outcome{err: err}
			}
			return outcome{conflict: st.apply(key, resp)}
		}})
	return err
}

// txn-span: Txns that put one key under "s/a/…" and the same key under
// "s/z/…" (random in KeySpace), unconditionally. bench/compare.sh splits
// Tessera's "s/" at "s/m", so each is a write spanning two ranges; etcd
// applies it as any Txn.
func runTxnSpan(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	low := KeyGen{Prefix: "s/a/", SizeBytes: cfg.KeySizeBytes, Space: cfg.KeySpace, Sequential: cfg.SequentialKeys}
	high := low
	high.Prefix = "s/z/"
	vals := NewValueGen(cfg.ValueSizeBytes, cfg.Seed)
	_, err := e.measure(ctx, res, loop{name: "txn-span", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			n := low.Index(seq, c.rng)
			value := vals.Value(c.rng)
			_, err := c.cli.Txn(ctx).Then(clientv3.OpPut(low.KeyAt(n), value), clientv3.OpPut(high.KeyAt(n), value)).Commit()
			return outcome{err: err}
		}})
	return err
}

// lease: lease churn, one request being a lease's life: Grant, one
// keep-alive, Revoke (each also timed on its own).
func runLease(ctx context.Context, e *env, res *Result) error {
	ttl := e.cfg.LeaseTTLSeconds
	_, err := e.measure(ctx, res, loop{name: "lease", total: e.cfg.Total, duration: e.cfg.Duration, rate: e.cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			t0 := time.Now()
			grant, err := c.cli.Grant(ctx, ttl)
			c.rec.observe("grant", time.Since(t0), err)
			if err != nil {
				return outcome{err: err}
			}
			t0 = time.Now()
			_, err = c.cli.KeepAliveOnce(ctx, grant.ID)
			c.rec.observe("keepalive", time.Since(t0), err)
			if err != nil {
				return outcome{err: err}
			}
			t0 = time.Now()
			_, err = c.cli.Revoke(ctx, grant.ID)
			c.rec.observe("revoke", time.Since(t0), err)
			return outcome{err: err}
		}})
	return err
}
