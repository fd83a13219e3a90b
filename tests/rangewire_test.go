package tests

import (
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestRangeWire: a Range in key order is answered from the stored versions
// in wire format (router.RangeWire); the same request with a revision filter
// that keeps every key (min_mod_revision 1) takes the decoding path. On three
// nodes with ranges led by different members (so some spans are read on
// another node), both answers must be the same message — header, kvs,
// count, more — for prefixes over several ranges, limits that end inside
// and at the edges of ranges, past revisions, and serializable reads; and
// the prefix read must hold exactly the keys written, with their values and
// versions.
func TestRangeWire(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *serverConfig) { cfg.ElectionTimeout = 3 * time.Second })
	splitAndPut(t, c, 4, 2500*time.Millisecond) // ranges split at k00 … k03, each holding kNNx
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	want := map[string]string{"k00x": "v", "k01x": "v", "k02x": "v", "k03x": "v"}
	versions := map[string]int64{"k00x": 1, "k01x": 1, "k02x": 1, "k03x": 1}
	for i := range 40 {
		key := fmt.Sprintf("k%02d/%02d", i%5, i)
		val := fmt.Sprintf("value %d %s", i, make([]byte, i*7))
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
		want[key] = val
		versions[key]++
	}
	mid, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		key := fmt.Sprintf("k%02d/%02d", i%5, i)
		if i%3 == 0 {
			if _, err := cli.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			delete(want, key)
			delete(versions, key)
			continue
		}
		if _, err := cli.Put(ctx, key, "again"); err != nil {
			t.Fatal(err)
		}
		want[key] = "again"
		versions[key]++
	}

	all, err := cli.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if all.Count != int64(len(want)) || len(all.Kvs) != len(want) || all.More {
		t.Fatalf("prefix read: %d kvs, count %d, more %v; want %d", len(all.Kvs), all.Count, all.More, len(want))
	}
	for i, kv := range all.Kvs {
		k := string(kv.Key)
		if i > 0 && string(all.Kvs[i-1].Key) >= k {
			t.Fatalf("prefix read out of order at %q", k)
		}
		if want[k] != string(kv.Value) || versions[k] != kv.Version || kv.ModRevision < kv.CreateRevision {
			t.Fatalf("prefix read: %q = %q version %d (create %d mod %d), want %q version %d",
				k, kv.Value, kv.Version, kv.CreateRevision, kv.ModRevision, want[k], versions[k])
		}
	}

	type read struct {
		name string
		key  string
		opts []clientv3.OpOption
	}
	var reads []read
	for _, limit := range []int64{0, 1, 3, 9, 10, 11, 25, int64(len(want)), int64(len(want)) + 1} {
		reads = append(reads,
			read{fmt.Sprintf("prefix limit %d", limit), "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(limit)}},
			read{fmt.Sprintf("from k01/ limit %d", limit), "k01/", []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithLimit(limit)}},
			read{fmt.Sprintf("past revision, limit %d", limit), "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(limit), clientv3.WithRev(mid.Header.Revision)}},
			read{fmt.Sprintf("serializable, limit %d", limit), "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(limit), clientv3.WithSerializable()}},
		)
	}
	reads = append(reads,
		read{"one key", "k02x", nil},
		read{"missing key", "k02y", nil},
		read{"span k01x..k03", "k01x", []clientv3.OpOption{clientv3.WithRange("k03")}},
		read{"sorted by key ascending", "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(7)}},
	)
	for _, ep := range c.Endpoints() {
		cli := c.Client(ep)
		for _, r := range reads {
			for attempt := 0; ; attempt++ {
				wire, err := cli.Get(ctx, r.key, r.opts...)
				if err != nil {
					t.Fatalf("%s via %s: %v", r.name, ep, err)
				}
				decoded, err := cli.Get(ctx, r.key, append(r.opts[:len(r.opts):len(r.opts)], clientv3.WithMinModRev(1))...)
				if err != nil {
					t.Fatalf("%s via %s, decoding: %v", r.name, ep, err)
				}
				if proto.Equal((*pb.RangeResponse)(wire), (*pb.RangeResponse)(decoded)) {
					break
				}
				// A serializable read of a follower may see it catch up
				// between the two reads.
				if attempt == 20 {
					t.Fatalf("%s via %s:\nwire    %v\ndecoded %v", r.name, ep, wire, decoded)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}
