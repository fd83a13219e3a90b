package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestNodeWithoutReplicas: four nodes, three replicas per range, so the
// fourth node holds no replica of any range. Through that node alone, every
// KV, lease, compaction and admin call works as through the others, and a
// watch there sees writes made elsewhere, across a split made through it.
func TestNodeWithoutReplicas(t *testing.T) {
	c := testcluster.Start(t, 4, func(cfg *serverConfig) {
		cfg.ListenMetricsURLs = []string{fmt.Sprintf("http://127.0.0.1:%d", testcluster.FreePort(t))}
	})
	n4 := c.Nodes[3]
	if held := n4.Server.Testing().RangeCount(); held != 0 {
		t.Fatalf("the fourth node runs %d ranges; with --replicas 3 it should run none", held)
	}
	for _, n := range c.Nodes[:3] {
		if held := n.Server.Testing().RangeCount(); held != 1 {
			t.Fatalf("%s runs %d ranges, want 1", n.Config.Name, held)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client(n4.ClientURL)
	other := c.Client(c.Nodes[0].ClientURL)

	w := cli.Watch(ctx, "so/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	for i := range 6 {
		if _, err := cli.Put(ctx, fmt.Sprintf("so/%d", i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatalf("put through the node without replicas: %v", err)
		}
	}
	// A split through the node without replicas is made where the range is.
	if err := n4.Server.SplitRange(ctx, "so/3"); err != nil {
		t.Fatalf("split through the node without replicas: %v", err)
	}
	waitRanges(t, c, 2)
	if _, err := other.Put(ctx, "so/4", "from-n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "so/1", "again"); err != nil {
		t.Fatal(err)
	}

	// Reads: linearizable and serializable, one range and across both, sorted,
	// limited, counted, at an old revision, and as a stream.
	all, err := cli.Get(ctx, "so/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(all.Kvs); got != "so/0 so/1 so/2 so/3 so/4 so/5" || string(all.Kvs[4].Value) != "from-n1" {
		t.Fatalf("list through the node without replicas: %s %q", got, all.Kvs[4].Value)
	}
	ser, err := cli.Get(ctx, "so/4", clientv3.WithSerializable())
	if err != nil || len(ser.Kvs) != 1 {
		t.Fatalf("serializable get: %v %v", ser, err)
	}
	desc, err := cli.Get(ctx, "so/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(2))
	if err != nil || keysOf(desc.Kvs) != "so/5 so/4" || !desc.More || desc.Count != 6 {
		t.Fatalf("descending limited list: %s more=%v count=%d err=%v", keysOf(desc.Kvs), desc.More, desc.Count, err)
	}
	byValue, err := cli.Get(ctx, "so/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortAscend))
	if err != nil || string(byValue.Kvs[0].Value) != "again" {
		t.Fatalf("list sorted by value: %v", err)
	}
	old, err := cli.Get(ctx, "so/", clientv3.WithPrefix(), clientv3.WithRev(all.Header.Revision-2))
	if err != nil || len(old.Kvs) != 6 || string(old.Kvs[1].Value) != "v1" {
		t.Fatalf("list at an old revision: %v %v", old, err)
	}
	streamed := rangeStreamKVs(t, pbKV(cli), &pb.RangeRequest{Key: []byte("so/"), RangeEnd: []byte(clientv3.GetPrefixRangeEnd("so/"))})
	if len(streamed) != 6 {
		t.Fatalf("RangeStream through the node without replicas gave %d kvs", len(streamed))
	}

	// Txn and delete.
	txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("so/4"), "=", "from-n1")).Then(clientv3.OpPut("so/4", "swapped")).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("txn: %v %v", txn, err)
	}
	if del, err := cli.Delete(ctx, "so/0"); err != nil || del.Deleted != 1 {
		t.Fatalf("delete: %v %v", del, err)
	}

	// Leases: grant, attach in both ranges, time-to-live with keys, list,
	// keep-alive, revoke.
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"so/l1", "so/l9"} {
		if _, err := cli.Put(ctx, k, "leased", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatalf("put with a lease: %v", err)
		}
	}
	ttl, err := cli.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 2 {
		t.Fatalf("time to live: %v %v", ttl, err)
	}
	leases, err := cli.Leases(ctx)
	if err != nil || len(leases.Leases) != 1 {
		t.Fatalf("lease list: %v %v", leases, err)
	}
	if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Fatalf("keep-alive: %v", err)
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if gone, err := other.Get(ctx, "so/l", clientv3.WithPrefix()); err != nil || len(gone.Kvs) != 0 {
		t.Fatalf("the revoked lease's keys remain: %v %v", gone, err)
	}

	// The watch saw every change, in order, across the split.
	want := []string{"PUT so/0", "PUT so/1", "PUT so/2", "PUT so/3", "PUT so/4", "PUT so/5", "PUT so/4", "PUT so/1",
		"PUT so/4", "DELETE so/0", "PUT so/l1", "PUT so/l9", "DELETE so/l1", "DELETE so/l9"}
	var got []string
	var lastRev int64
	for len(got) < len(want) {
		select {
		case resp, ok := <-w:
			if !ok || resp.Err() != nil {
				t.Fatalf("watch ended: %v (saw %v)", resp.Err(), got)
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision < lastRev {
					t.Fatalf("watch went back from revision %d to %d", lastRev, ev.Kv.ModRevision)
				}
				lastRev = ev.Kv.ModRevision
				got = append(got, eventString(ev))
			}
		case <-ctx.Done():
			t.Fatalf("watch saw %v, want %v", got, want)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("watch saw\n%v\nwant\n%v", got, want)
	}

	// Compaction through it reaches every range, and a watch from below it
	// is refused as etcd refuses it.
	if _, err := cli.Compact(ctx, lastRev); err != nil {
		t.Fatalf("compact: %v", err)
	}
	refused := cli.Watch(ctx, "so/", clientv3.WithPrefix(), clientv3.WithRev(2))
	if resp := <-refused; resp.CompactRevision != lastRev {
		t.Fatalf("a watch below the compaction got %+v, want compact revision %d", resp, lastRev)
	}
	if _, err := other.Get(ctx, "so/", clientv3.WithPrefix(), clientv3.WithRev(lastRev-1)); err == nil {
		t.Fatal("a read below the compaction succeeded on another node")
	}

	// Status (etcdctl endpoint status; kube-apiserver asks it for the
	// version) answers there as on the others.
	st, err := cli.Status(ctx, n4.ClientURL)
	if err != nil || st.Version != "3.7.3" || st.Leader == 0 || st.RaftIndex == 0 || st.Header.Revision < lastRev || st.Header.MemberId != 4 {
		t.Fatalf("status of the node without replicas: %+v %v", st, err)
	}
	// So does /health, as etcd's.
	for _, query := range []string{"", "?serializable=true"} {
		resp, err := http.Get(n4.Config.ListenMetricsURLs[0] + "/health" + query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != `{"health":"true","reason":""}` {
			t.Fatalf("/health%s of the node without replicas: %d %s", query, resp.StatusCode, body)
		}
	}
}

func keysOf(kvs []*mvccpb.KeyValue) string {
	keys := make([]string, len(kvs))
	for i, kv := range kvs {
		keys[i] = string(kv.Key)
	}
	return strings.Join(keys, " ")
}

func eventString(ev *clientv3.Event) string {
	return fmt.Sprintf("%s %s", ev.Type, ev.Kv.Key)
}

// rangeStreamKVs reads a whole RangeStream and returns its kvs.
func rangeStreamKVs(t *testing.T, kv pb.KVClient, req *pb.RangeRequest) []*mvccpb.KeyValue {
	t.Helper()
	stream, err := kv.RangeStream(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var kvs []*mvccpb.KeyValue
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return kvs
		}
		if err != nil {
			t.Fatalf("RangeStream: %v", err)
		}
		kvs = append(kvs, msg.RangeResponse.Kvs...)
	}
}
