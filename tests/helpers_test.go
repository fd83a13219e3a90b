package tests

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
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
