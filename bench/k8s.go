package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The k8s workload imitates what kube-apiserver asks of etcd: objects of
// 1–10 KiB under /registry/<resource>/<namespace>/<name>, written only by
// compare-and-swap Txns on mod_revision (creates compare against 0),
// quorum Gets, Lists paged with a limit and a continuation at the first
// page's revision, one watch per resource prefix (the watch cache), and
// Events that each get their own lease, as kube-apiserver attaches a TTL to
// every Event.

// k8sResources are the object kinds that are created, updated and deleted.
var k8sResources = []string{"pods", "configmaps", "secrets"}

// k8sMix is the request mix, in percent; it sums to 100.
var k8sMix = []struct {
	op      string
	percent int
}{
	{"update", 45}, // CAS update of an existing object (a create when it is gone)
	{"get", 20},    // quorum read of one object
	{"event", 20},  // lease grant + CAS create of an Event with that lease
	{"churn", 10},  // CAS delete of an object (a create when it is gone)
	{"list", 5},    // paginated list of one resource in all namespaces
}

// pickK8sOp maps a number in [0, 100) to an operation of the mix.
func pickK8sOp(roll int) string {
	for _, m := range k8sMix {
		if roll < m.percent {
			return m.op
		}
		roll -= m.percent
	}
	return k8sMix[len(k8sMix)-1].op
}

// k8sObjectKey is the key of object slot n: resources and namespaces taken
// in turn.
func k8sObjectKey(n, namespaces int) string {
	resource := k8sResources[n%len(k8sResources)]
	ns := (n / len(k8sResources)) % namespaces
	return fmt.Sprintf("/registry/%s/ns-%02d/obj-%06d", resource, ns, n)
}

// k8sOwnedSlot picks an object slot owned by client id of clients (slots
// id, id+clients, …), or any slot when there are more clients than objects.
// Owners keep CAS conflicts rare, as controllers mostly write their own
// objects; they still happen when a slot has two owners.
func k8sOwnedSlot(id, clients, objects int, roll func(n int) int) int {
	if id >= objects {
		return roll(objects)
	}
	owned := (objects - id + clients - 1) / clients
	return id + clients*roll(owned)
}

type k8sState struct {
	cfg      Config
	vals     ValueGen
	modRevs  []atomic.Int64 // per object slot: 0 = absent
	writesOK atomic.Int64   // writes that succeeded, each one watch event
}

func (s *k8sState) objectValue(c *client) string {
	size := s.cfg.K8sObjectMinBytes + c.rng.IntN(s.cfg.K8sObjectMaxBytes-s.cfg.K8sObjectMinBytes+1)
	return s.vals.Sized(size, c.rng)
}

// cas writes slot n: a create if it is believed absent, else an update (or
// a delete when del), all guarded by mod_revision.
func (s *k8sState) cas(ctx context.Context, c *client, n int, del bool) outcome {
	key := k8sObjectKey(n, s.cfg.K8sNamespaces)
	rev := s.modRevs[n].Load()
	op, write := "update", clientv3.OpPut(key, s.objectValue(c))
	switch {
	case rev == 0:
		op = "create"
	case del:
		op, write = "delete", clientv3.OpDelete(key)
	}
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(write).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return outcome{op: op, err: err}
	}
	if resp.Succeeded {
		s.writesOK.Add(1)
		if op == "delete" {
			s.modRevs[n].Store(0)
		} else {
			s.modRevs[n].Store(resp.Header.GetRevision())
		}
		return outcome{op: op}
	}
	current := int64(0)
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		current = kvs[0].ModRevision
	}
	s.modRevs[n].Store(current)
	return outcome{op: op, conflict: true}
}

func (s *k8sState) event(ctx context.Context, c *client, seq int64) outcome {
	t0 := time.Now()
	lease, err := c.cli.Grant(ctx, s.cfg.LeaseTTLSeconds)
	c.rec.observe("lease-grant", time.Since(t0), err)
	if err != nil {
		return outcome{op: "event", err: err}
	}
	key := fmt.Sprintf("/registry/events/ns-%02d/ev-%d", int(seq)%s.cfg.K8sNamespaces, seq)
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, s.objectValue(c), clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return outcome{op: "event", err: err}
	}
	if resp.Succeeded {
		s.writesOK.Add(1)
	}
	return outcome{op: "event", conflict: !resp.Succeeded}
}

func (s *k8sState) list(ctx context.Context, c *client, resource string) outcome {
	prefix := "/registry/" + resource + "/"
	key, end, rev := prefix, prefixEnd(prefix), int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(s.cfg.PageLimit)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.cli.Get(ctx, key, opts...)
		if err != nil {
			return outcome{op: "list", err: err}
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return outcome{op: "list"}
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func runK8s(ctx context.Context, e *env, res *Result) error {
	cfg := e.cfg
	s := &k8sState{cfg: cfg, vals: NewValueGen(cfg.K8sObjectMaxBytes, cfg.Seed), modRevs: make([]atomic.Int64, cfg.K8sObjects)}
	prefixes := []string{"/registry/events/"}
	for _, r := range k8sResources {
		prefixes = append(prefixes, "/registry/"+r+"/")
	}
	res.Watch = &WatchResult{Watchers: len(prefixes), Streams: 1}
	ws, err := e.startWatchersFor(ctx, res, prefixes, 1)
	if ws == nil {
		return err
	}
	defer ws.stop()
	pre := e.run(ctx, loop{name: "preload", total: int64(cfg.K8sObjects), do: func(ctx context.Context, c *client, seq int64) outcome {
		return s.cas(ctx, c, int(seq), false)
	}})
	if pre.unsupported != "" {
		res.Unsupported = pre.unsupported
		return nil
	}
	if pre.rec.errors > 0 {
		return fmt.Errorf("preloading %d objects: %d failed, e.g. %v", cfg.K8sObjects, pre.rec.errors, sortedKeys(pre.rec.errs)[0])
	}
	_, err = e.measure(ctx, res, loop{name: "k8s", total: cfg.Total, duration: cfg.Duration, rate: cfg.RatePerSecond,
		do: func(ctx context.Context, c *client, seq int64) outcome {
			switch pickK8sOp(c.rng.IntN(100)) {
			case "update":
				return s.cas(ctx, c, k8sOwnedSlot(c.id, cfg.Clients, cfg.K8sObjects, c.rng.IntN), false)
			case "churn":
				return s.cas(ctx, c, k8sOwnedSlot(c.id, cfg.Clients, cfg.K8sObjects, c.rng.IntN), true)
			case "get":
				_, err := c.cli.Get(ctx, k8sObjectKey(c.rng.IntN(cfg.K8sObjects), cfg.K8sNamespaces))
				return outcome{op: "get", err: err}
			case "list":
				return s.list(ctx, c, k8sResources[c.rng.IntN(len(k8sResources))])
			default:
				return s.event(ctx, c, seq)
			}
		}})
	if err != nil {
		return err
	}
	res.Watch.EventsExpected = s.writesOK.Load()
	ws.drain(res.Watch.EventsExpected)
	ws.stop()
	res.Watch.EventsReceived = ws.received.Load()
	if ws.err != nil {
		res.ErrorSamples["watch: "+errorText(ws.err)]++
	}
	return nil
}
