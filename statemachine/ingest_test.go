package statemachine

import (
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func ingestCmd(t testing.TB, id string, seq uint64, last bool, vs ...*tesserapb.IngestVersion) []byte {
	return mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_Ingest{Ingest: &tesserapb.IngestCommand{
		SnapshotId: []byte(id), Seq: seq, Versions: vs, Last: last, Revision: 6, CompactedRevision: 3,
	}}})
}

func put(key string, rev, create, version, lease int64) *tesserapb.IngestVersion {
	return &tesserapb.IngestVersion{Key: []byte(key), ModRevision: rev, CreateRevision: create, Version: version, Lease: lease, Value: fmt.Appendf(nil, "%s@%d", key, rev)}
}

func keysAt(t *testing.T, v *View, rev int64) string {
	t.Helper()
	resp, err := v.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, fmt.Sprintf("%s=%s c%d m%d v%d l%d", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease))
	}
	return strings.Join(out, " ")
}

func TestIngest(t *testing.T) {
	h := newHarness(t)
	grant := mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_LeaseGrant{LeaseGrant: &tesserapb.LeaseGrantCommand{Id: 7, TtlSeconds: 60}}})
	chunk0 := ingestCmd(t, "snap", 0, false,
		put("a", 2, 2, 1, 7), put("b", 3, 3, 1, 0), put("a", 4, 2, 2, 0),
		&tesserapb.IngestVersion{Key: []byte("b"), ModRevision: 5, Tombstone: true})
	chunk1 := ingestCmd(t, "snap", 1, true, put("c", 6, 6, 1, 7))
	for i, res := range h.update(grant, chunk0, chunk0, ingestCmd(t, "snap", 3, false), ingestCmd(t, "other", 1, false), chunk1) {
		wantOK := i != 3 && i != 4
		if (res.Code == CodeOK) != wantOK {
			t.Fatalf("command %d: code %d (%s)", i, res.Code, res.Message)
		}
	}
	v := h.view()
	if v.Revision() != 6 || v.CompactRevision() != 3 || v.Floor() != 6 {
		t.Fatalf("revision %d, compacted %d, floor %d; want 6, 3, 6", v.Revision(), v.CompactRevision(), v.Floor())
	}
	if got, want := keysAt(t, v, 0), "a=a@4 c2 m4 v2 l0 c=c@6 c6 m6 v1 l7"; got != want {
		t.Fatalf("at 6: %s\nwant %s", got, want)
	}
	if got, want := keysAt(t, v, 3), "a=a@2 c2 m2 v1 l7 b=b@3 c3 m3 v1 l0"; got != want {
		t.Fatalf("at 3: %s\nwant %s", got, want)
	}
	if got := keysAt(t, v, 2); !strings.Contains(got, "compacted") {
		t.Fatalf("at 2: %s, want compacted", got)
	}
	_, keys, err := v.Lease(7)
	if err != nil || len(keys) != 1 || string(keys[0]) != "c" {
		t.Fatalf("lease 7 keys %q, %v; want [c]", keys, err)
	}
	v.Close()

	// Nothing can be ingested once the range was written, and writes go on
	// above the snapshot's revision.
	write := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("d"), Value: []byte("x")}}}}}
	res := h.update(txnCmd(t, 6, write), txnCmd(t, 7, write), ingestCmd(t, "fresh", 0, true))
	if res[0].Code != CodeStaleRevision || res[1].Code != CodeOK || res[2].Code != CodeInvalidCommand {
		t.Fatalf("codes %d %d %d; want stale, ok, invalid", res[0].Code, res[1].Code, res[2].Code)
	}
	fresh := newHarness(t)
	h.restart()
	v = h.view()
	if got, want := keysAt(t, v, 0), "a=a@4 c2 m4 v2 l0 c=c@6 c6 m6 v1 l7 d=x c7 m7 v1 l0"; got != want {
		t.Fatalf("after a restart: %s\nwant %s", got, want)
	}
	v.Close()
	// A key's versions must come in revision order.
	res = fresh.update(ingestCmd(t, "s", 0, false, put("a", 4, 4, 1, 0), put("a", 3, 3, 1, 0)))
	if res[0].Code != CodeInvalidCommand {
		t.Fatalf("versions out of order: code %d", res[0].Code)
	}
}
