package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// errIs compares a client error with one of etcd's gRPC errors by message,
// as clientv3 users do (rpctypes.ErrorDesc).
func errIs(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	if rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

func TestKVPutGet(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)

	first, err := cli.Put(ctx, "a", "1")
	if err != nil {
		t.Fatal(err)
	}
	if first.Header.Revision != 2 {
		t.Fatalf("first put revision = %d, want 2 (etcd starts at 1)", first.Header.Revision)
	}
	if first.Header.ClusterId == 0 || first.Header.MemberId == 0 {
		t.Fatalf("header lacks cluster or member ID: %+v", first.Header)
	}
	second, err := cli.Put(ctx, "a", "2", clientv3.WithPrevKV())
	if err != nil {
		t.Fatal(err)
	}
	if second.PrevKv == nil || string(second.PrevKv.Value) != "1" {
		t.Fatalf("prev kv = %v, want value 1", second.PrevKv)
	}
	get, err := cli.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(get.Kvs) != 1 {
		t.Fatalf("get = %v", get.Kvs)
	}
	kv := get.Kvs[0]
	if string(kv.Value) != "2" || kv.Version != 2 || kv.CreateRevision != first.Header.Revision || kv.ModRevision != second.Header.Revision {
		t.Fatalf("kv = %+v", kv)
	}
	if get.Header.Revision != second.Header.Revision {
		t.Fatalf("get header revision = %d, want %d", get.Header.Revision, second.Header.Revision)
	}
	// Reading at the first revision shows the first value.
	old, err := cli.Get(ctx, "a", clientv3.WithRev(first.Header.Revision))
	if err != nil {
		t.Fatal(err)
	}
	if string(old.Kvs[0].Value) != "1" {
		t.Fatalf("value at rev %d = %q, want 1", first.Header.Revision, old.Kvs[0].Value)
	}
	// Serializable reads see the same.
	ser, err := cli.Get(ctx, "a", clientv3.WithSerializable())
	if err != nil || string(ser.Kvs[0].Value) != "2" {
		t.Fatalf("serializable get = %v, %v", ser, err)
	}
	// Missing key: no kvs, no error.
	none, err := cli.Get(ctx, "missing")
	if err != nil || len(none.Kvs) != 0 || none.Count != 0 {
		t.Fatalf("missing key get = %+v, %v", none, err)
	}
}

func TestKVRangeOptions(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	for i := range 10 {
		if _, err := cli.Put(ctx, fmt.Sprintf("p/%02d", i), strings.Repeat("v", 10-i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "q", "outside"); err != nil {
		t.Fatal(err)
	}

	all, err := cli.Get(ctx, "p/", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != 10 || all.Count != 10 || all.More {
		t.Fatalf("prefix get: %d kvs count=%d more=%v err=%v", len(all.Kvs), all.Count, all.More, err)
	}
	limited, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithLimit(3))
	if err != nil || len(limited.Kvs) != 3 || limited.Count != 10 || !limited.More {
		t.Fatalf("limit 3: %d kvs count=%d more=%v err=%v", len(limited.Kvs), limited.Count, limited.More, err)
	}
	if string(limited.Kvs[0].Key) != "p/00" || string(limited.Kvs[2].Key) != "p/02" {
		t.Fatalf("limit 3 keys = %s..%s", limited.Kvs[0].Key, limited.Kvs[2].Key)
	}
	desc, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(2))
	if err != nil || string(desc.Kvs[0].Key) != "p/09" || string(desc.Kvs[1].Key) != "p/08" {
		t.Fatalf("descending: %v %v", desc, err)
	}
	byValue, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortAscend))
	if err != nil || string(byValue.Kvs[0].Key) != "p/09" {
		t.Fatalf("sort by value: first = %s, %v", byValue.Kvs[0].Key, err)
	}
	keysOnly, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil || len(keysOnly.Kvs) != 10 || len(keysOnly.Kvs[0].Value) != 0 {
		t.Fatalf("keys only: %v %v", keysOnly, err)
	}
	countOnly, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || countOnly.Count != 10 || len(countOnly.Kvs) != 0 {
		t.Fatalf("count only: %v %v", countOnly, err)
	}
	fromKey, err := cli.Get(ctx, "p/05", clientv3.WithFromKey())
	if err != nil || fromKey.Count != 6 { // p/05..p/09 and q
		t.Fatalf("from key: count=%d %v", fromKey.Count, err)
	}
	rangeEnd, err := cli.Get(ctx, "p/03", clientv3.WithRange("p/06"))
	if err != nil || rangeEnd.Count != 3 {
		t.Fatalf("[p/03, p/06): count=%d %v", rangeEnd.Count, err)
	}
	minMod, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithMinModRev(all.Kvs[8].ModRevision))
	if err != nil || len(minMod.Kvs) != 2 {
		t.Fatalf("min mod revision: %d kvs, %v", len(minMod.Kvs), err)
	}
	// etcd treats a negative limit as no limit; it changes nothing.
	neg, err := cli.Get(ctx, "p/", clientv3.WithPrefix(), clientv3.WithLimit(-1))
	if err != nil || len(neg.Kvs) != 10 {
		t.Fatalf("negative limit: %d kvs, %v", len(neg.Kvs), err)
	}
}

func TestKVDelete(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	for _, k := range []string{"d/1", "d/2", "d/3", "e"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	del, err := cli.Delete(ctx, "d/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil || del.Deleted != 3 || len(del.PrevKvs) != 3 {
		t.Fatalf("delete prefix: %+v %v", del, err)
	}
	// Deleting nothing does not move the revision, as in etcd.
	again, err := cli.Delete(ctx, "d/", clientv3.WithPrefix())
	if err != nil || again.Deleted != 0 || again.Header.Revision != del.Header.Revision {
		t.Fatalf("second delete: deleted=%d rev=%d (want 0, %d) err=%v", again.Deleted, again.Header.Revision, del.Header.Revision, err)
	}
	get, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil || get.Count != 1 || string(get.Kvs[0].Key) != "e" {
		t.Fatalf("after delete: %+v %v", get, err)
	}
	// The deleted keys are still visible at an older revision.
	old, err := cli.Get(ctx, "d/", clientv3.WithPrefix(), clientv3.WithRev(del.Header.Revision-1))
	if err != nil || old.Count != 3 {
		t.Fatalf("before delete: count=%d %v", old.Count, err)
	}
	// Recreating a deleted key starts a new version history.
	put, err := cli.Put(ctx, "d/1", "again")
	if err != nil {
		t.Fatal(err)
	}
	get, err = cli.Get(ctx, "d/1")
	if err != nil || get.Kvs[0].Version != 1 || get.Kvs[0].CreateRevision != put.Header.Revision {
		t.Fatalf("recreated: %+v %v", get.Kvs, err)
	}
}

func TestKVTxn(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	put, err := cli.Put(ctx, "k", "v1")
	if err != nil {
		t.Fatal(err)
	}
	// Compare-and-swap on mod revision: succeeds once, fails after.
	for i, want := range []bool{true, false} {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision("k"), "=", put.Header.Revision)).
			Then(clientv3.OpPut("k", fmt.Sprintf("v%d", i+2)), clientv3.OpGet("k")).
			Else(clientv3.OpGet("k")).
			Commit()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Succeeded != want {
			t.Fatalf("txn %d succeeded=%v, want %v", i, resp.Succeeded, want)
		}
	}
	get, _ := cli.Get(ctx, "k")
	if string(get.Kvs[0].Value) != "v2" {
		t.Fatalf("value = %q, want v2", get.Kvs[0].Value)
	}
	// Compares on value, version, create revision; a missing key has version 0.
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.Value("k"), "=", "v2"),
		clientv3.Compare(clientv3.Version("k"), ">", 1),
		clientv3.Compare(clientv3.CreateRevision("k"), "=", put.Header.Revision),
		clientv3.Compare(clientv3.Version("absent"), "=", 0),
	).Then(clientv3.OpPut("new", "x"), clientv3.OpDelete("k")).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("multi-compare txn: %+v %v", resp, err)
	}
	// Nested txn.
	resp, err = cli.Txn(ctx).Then(clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value("new"), "=", "x")},
		[]clientv3.Op{clientv3.OpPut("nested", "yes")}, nil)).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("nested txn: %+v %v", resp, err)
	}
	if g, _ := cli.Get(ctx, "nested"); len(g.Kvs) != 1 {
		t.Fatal("nested put did not land")
	}
	// Duplicate key in one txn: refused, nothing changes.
	before, _ := cli.Get(ctx, "dup")
	_, err = cli.Txn(ctx).Then(clientv3.OpPut("dup", "1"), clientv3.OpPut("dup", "2")).Commit()
	errIs(t, err, rpctypes.ErrGRPCDuplicateKey)
	_, err = cli.Txn(ctx).Then(clientv3.OpDelete("d", clientv3.WithPrefix()), clientv3.OpPut("dup", "2")).Commit()
	errIs(t, err, rpctypes.ErrGRPCDuplicateKey)
	after, _ := cli.Get(ctx, "dup")
	if len(after.Kvs) != 0 || after.Header.Revision != before.Header.Revision {
		t.Fatalf("refused txn changed the store: %v, rev %d -> %d", after.Kvs, before.Header.Revision, after.Header.Revision)
	}
	// Too many operations.
	var ops []clientv3.Op
	for i := range 129 {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("many/%d", i), "v"))
	}
	_, err = cli.Txn(ctx).Then(ops...).Commit()
	errIs(t, err, rpctypes.ErrGRPCTooManyOps)
}

func TestKVBadInput(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *serverConfig) { cfg.MaxRequestBytes = 64 * 1024 })
	cli := c.Client()
	ctx := ctxT(t)
	put, err := cli.Put(ctx, "x", "1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Put(ctx, "", "v")
	errIs(t, err, rpctypes.ErrGRPCEmptyKey)
	_, err = cli.Get(ctx, "")
	errIs(t, err, rpctypes.ErrGRPCEmptyKey)
	_, err = cli.Delete(ctx, "")
	errIs(t, err, rpctypes.ErrGRPCEmptyKey)
	_, err = cli.Put(ctx, "big", strings.Repeat("x", 65*1024))
	errIs(t, err, rpctypes.ErrGRPCRequestTooLarge)
	_, err = cli.Get(ctx, "x", clientv3.WithRev(put.Header.Revision+100))
	errIs(t, err, rpctypes.ErrGRPCFutureRev)
	_, err = cli.Put(ctx, "x", "2", clientv3.WithLease(12345))
	errIs(t, err, rpctypes.ErrGRPCLeaseNotFound)
	_, err = cli.Put(ctx, "absent", "", clientv3.WithIgnoreValue())
	errIs(t, err, rpctypes.ErrGRPCKeyNotFound)
	// range_end below key: an empty result, as in etcd.
	inv, err := cli.Get(ctx, "x", clientv3.WithRange("a"))
	if err != nil || len(inv.Kvs) != 0 {
		t.Fatalf("range_end < key: %v %v", inv, err)
	}
	// None of it changed anything. (Requests refused by the state machine,
	// like the unknown lease, used up a revision number, so the header may
	// have moved; no key did.)
	get, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil || get.Count != 1 || get.Kvs[0].ModRevision != put.Header.Revision || string(get.Kvs[0].Value) != "1" {
		t.Fatalf("store after bad input: %+v (want only x=1 at %d) err=%v", get.Kvs, put.Header.Revision, err)
	}
	// The server keeps serving.
	if _, err := cli.Put(ctx, "y", "ok"); err != nil {
		t.Fatal(err)
	}
}

func TestKVCompact(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	var revs []int64
	for i := range 5 {
		resp, err := cli.Put(ctx, "c", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	if _, err := cli.Compact(ctx, revs[2]); err != nil {
		t.Fatal(err)
	}
	_, err := cli.Get(ctx, "c", clientv3.WithRev(revs[1]))
	errIs(t, err, rpctypes.ErrGRPCCompacted)
	at, err := cli.Get(ctx, "c", clientv3.WithRev(revs[2]))
	if err != nil || string(at.Kvs[0].Value) != "2" {
		t.Fatalf("read at the compaction revision: %v %v", at, err)
	}
	_, err = cli.Compact(ctx, revs[1])
	errIs(t, err, rpctypes.ErrGRPCCompacted)
	_, err = cli.Compact(ctx, revs[4]+10)
	errIs(t, err, rpctypes.ErrGRPCFutureRev)
	if _, err := cli.Compact(ctx, revs[4], clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	cur, err := cli.Get(ctx, "c")
	if err != nil || string(cur.Kvs[0].Value) != "4" || cur.Kvs[0].Version != 5 {
		t.Fatalf("after compaction: %v %v", cur, err)
	}
}

func TestKVRangeStream(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	const n = 1000
	for i := range n {
		if _, err := cli.Put(ctx, fmt.Sprintf("s/%04d", i), strings.Repeat("v", 100)); err != nil {
			t.Fatal(err)
		}
	}
	last, _ := cli.Get(ctx, "s/0000")
	for _, limit := range []int64{0, 10, 999, 1000, 5000} {
		stream, err := pbKV(cli).RangeStream(ctx, rangeReq("s/", limit))
		if err != nil {
			t.Fatal(err)
		}
		var kvs []*mvccpb.KeyValue
		var final *rangeResponse
		for {
			msg, err := stream.Recv()
			if err != nil {
				break
			}
			kvs = append(kvs, msg.RangeResponse.Kvs...)
			if msg.RangeResponse.Header != nil {
				final = msg.RangeResponse
			}
		}
		want := n
		if limit > 0 && limit < n {
			want = int(limit)
		}
		if len(kvs) != want || final == nil || final.Count != n || final.More != (want < n) {
			t.Fatalf("limit %d: %d kvs, final=%v", limit, len(kvs), final)
		}
		if final.Header.Revision != last.Header.Revision {
			t.Fatalf("stream header revision = %d, want %d", final.Header.Revision, last.Header.Revision)
		}
		for i, kv := range kvs {
			if string(kv.Key) != fmt.Sprintf("s/%04d", i) || string(kv.Value) != strings.Repeat("v", 100) ||
				kv.Version != 1 || kv.ModRevision != last.Kvs[0].ModRevision+int64(i) {
				t.Fatalf("kv %d = %s %q version %d mod %d", i, kv.Key, kv.Value, kv.Version, kv.ModRevision)
			}
		}
	}
}

func TestQuotaNoSpace(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *serverConfig) { cfg.QuotaBackendBytes = 1 })
	cli := c.Client()
	ctx := ctxT(t)
	_, err := cli.Put(ctx, "k", "v")
	errIs(t, err, rpctypes.ErrGRPCNoSpace)
	_, err = cli.Grant(ctx, 10)
	errIs(t, err, rpctypes.ErrGRPCNoSpace)
	// Reads and deletes still work, and the alarm is listed.
	if _, err := cli.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	alarms, err := cli.AlarmList(ctx)
	if err != nil || len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm.String() != "NOSPACE" {
		t.Fatalf("alarm list = %+v %v", alarms, err)
	}
}

func TestAutoCompactionPeriodic(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.AutoCompactionMode = "periodic"
		cfg.AutoCompactionRetention = "2s"
	})
	cli := c.Client()
	ctx := ctxT(t)
	first, err := cli.Put(ctx, "auto", "0")
	if err != nil {
		t.Fatal(err)
	}
	// Keep writing; within a few retention periods the first revision is
	// compacted away, as etcd's periodic compactor does.
	deadline := time.Now().Add(20 * time.Second)
	for i := 1; time.Now().Before(deadline); i++ {
		if _, err := cli.Put(ctx, "auto", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		_, err := cli.Get(ctx, "auto", clientv3.WithRev(first.Header.Revision))
		if err != nil {
			errIs(t, err, rpctypes.ErrGRPCCompacted)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("revision not compacted by periodic auto-compaction within 20s")
}

func TestKVMoreEdgeCases(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "e/1", "one", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	// ignore_lease keeps the lease; ignore_value keeps the value.
	if _, err := cli.Put(ctx, "e/1", "uno", clientv3.WithIgnoreLease()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "e/1", "", clientv3.WithIgnoreValue(), clientv3.WithIgnoreLease()); err != nil {
		t.Fatal(err)
	}
	get, err := cli.Get(ctx, "e/1")
	if err != nil || string(get.Kvs[0].Value) != "uno" || get.Kvs[0].Lease != int64(lease.ID) || get.Kvs[0].Version != 3 {
		t.Fatalf("after ignore_lease/ignore_value: %+v %v", get.Kvs, err)
	}
	// A Txn comparing the lease and reading in its branch.
	txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue("e/1"), "=", lease.ID)).
		Then(clientv3.OpGet("e/1"), clientv3.OpPut("e/2", "two")).Commit()
	if err != nil || !txn.Succeeded || len(txn.Responses) != 2 || string(txn.Responses[0].GetResponseRange().Kvs[0].Value) != "uno" {
		t.Fatalf("lease compare txn: %+v %v", txn, err)
	}
	// A read-only Txn changes nothing.
	before, _ := cli.Get(ctx, "e/", clientv3.WithPrefix())
	ro, err := cli.Txn(ctx).Then(clientv3.OpGet("e/", clientv3.WithPrefix())).Commit()
	if err != nil || len(ro.Responses[0].GetResponseRange().Kvs) != 2 {
		t.Fatalf("read-only txn: %+v %v", ro, err)
	}
	after, _ := cli.Get(ctx, "e/", clientv3.WithPrefix())
	if after.Kvs[1].ModRevision != before.Kvs[1].ModRevision {
		t.Fatal("read-only txn changed a key")
	}
	// Revision filters: keys created after a revision.
	created, err := cli.Get(ctx, "e/", clientv3.WithPrefix(), clientv3.WithMinCreateRev(txn.Header.Revision))
	if err != nil || len(created.Kvs) != 1 || string(created.Kvs[0].Key) != "e/2" {
		t.Fatalf("min create revision: %+v %v", created.Kvs, err)
	}
	// RangeStream honours count_only and keys_only.
	stream, err := pbKV(cli).RangeStream(ctx, &pb.RangeRequest{Key: []byte("e/"), RangeEnd: []byte("e0"), CountOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil || msg.RangeResponse.Count != 2 || len(msg.RangeResponse.Kvs) != 0 {
		t.Fatalf("RangeStream count_only: %+v %v", msg, err)
	}
	stream, err = pbKV(cli).RangeStream(ctx, &pb.RangeRequest{Key: []byte("e/"), RangeEnd: []byte("e0"), KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	msg, err = stream.Recv()
	if err != nil || len(msg.RangeResponse.Kvs) != 2 || len(msg.RangeResponse.Kvs[0].Value) != 0 {
		t.Fatalf("RangeStream keys_only: %+v %v", msg, err)
	}
	// A custom sort order is refused on RangeStream, as etcd does.
	stream, err = pbKV(cli).RangeStream(ctx, &pb.RangeRequest{Key: []byte("e/"), SortOrder: pb.RangeRequest_DESCEND})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("RangeStream with a sort order: %v", err)
	}
	// Status names the API level and the leader.
	st, err := cli.Status(ctx, c.Nodes[0].ClientURL)
	if err != nil || st.Version != "3.7.3" || st.Leader == 0 || st.RaftIndex == 0 || st.DbSize == 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
}
