package tests

import (
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/server"
)

type (
	serverConfig  = server.Config
	rangeResponse = pb.RangeResponse
)

// pbKV is the raw KV client on cli's connection, for RPCs clientv3 does not
// wrap (RangeStream).
func pbKV(cli *clientv3.Client) pb.KVClient { return pb.NewKVClient(cli.ActiveConnection()) }

// rangeReq is a prefix range request with a limit.
func rangeReq(prefix string, limit int64) *pb.RangeRequest {
	return &pb.RangeRequest{Key: []byte(prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(prefix)), Limit: limit}
}

// requireAcked fails the test unless every acknowledged key reads back with
// its acknowledged value in kvs. who names the node or process read.
func requireAcked(t *testing.T, who string, kvs []*mvccpb.KeyValue, acked map[string]string) {
	t.Helper()
	got := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	lost := 0
	for k, v := range acked {
		if got[k] != v {
			if lost < 5 {
				t.Errorf("%s: acknowledged %s=%s reads %q", who, k, v, got[k])
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%s: %d of %d acknowledged writes lost", who, lost, len(acked))
	}
}

// waitFor polls ok every 100 ms until it holds, failing the test after
// limit.
func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
