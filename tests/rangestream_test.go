package tests

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/server"
)

// streamShape is how a RangeStream answer is cut into messages: the kvs each
// message carries, and the count and more of the last one, the only one
// with a header.
type streamShape struct {
	kvs   []int
	count int64
	more  bool
}

// streamCase is a GetStream and the shape etcd v3.7.3 answers it with
// (server/etcdserver/v3_server.go, rangeStream): the first message holds up
// to 10 kvs, the next limit doubles while a message encodes to under half of
// --max-request-bytes and halves over twice it, and header, count and more
// ride on the last message that carries kvs; an empty result and a count are
// one message.
type streamCase struct {
	name string
	key  string
	opts []clientv3.OpOption
	want streamShape
}

// streamRequestBytes is the nodes' --max-request-bytes, small enough that
// the b/ keys' 1,000-byte values make messages halve.
const streamRequestBytes = 4096

// streamData writes the keys the cases read and returns the revision after
// the first five r/ keys.
func streamData(t *testing.T, cli *clientv3.Client) (early int64) {
	t.Helper()
	ctx := ctxT(t)
	put := func(key, value string) int64 {
		resp, err := cli.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	for i := range 25 {
		rev := put(fmt.Sprintf("r/%03d", i), fmt.Sprintf("v%d", i))
		if i == 4 {
			early = rev
		}
	}
	for i := range 10 {
		put(fmt.Sprintf("t/%02d", i), "v")
	}
	for i := range 100 {
		put(fmt.Sprintf("m/%03d", i), "v")
	}
	for i := range 25 {
		put(fmt.Sprintf("b/%02d", i), strings.Repeat("x", 1000))
	}
	return early
}

func streamCases(early int64) []streamCase {
	prefix := clientv3.WithPrefix()
	return []streamCase{
		{"fits one message", "t/", []clientv3.OpOption{prefix}, streamShape{[]int{10}, 10, false}},
		{"two messages", "r/", []clientv3.OpOption{prefix}, streamShape{[]int{10, 15}, 25, false}},
		{"doubling", "m/", []clientv3.OpOption{prefix}, streamShape{[]int{10, 20, 40, 30}, 100, false}},
		{"halving", "b/", []clientv3.OpOption{prefix}, streamShape{[]int{10, 5, 5, 5}, 25, false}},
		{"limit 1", "r/", []clientv3.OpOption{prefix, clientv3.WithLimit(1)}, streamShape{[]int{1}, 25, true}},
		{"limit at a message boundary", "r/", []clientv3.OpOption{prefix, clientv3.WithLimit(10)}, streamShape{[]int{10}, 25, true}},
		{"limit inside a message", "r/", []clientv3.OpOption{prefix, clientv3.WithLimit(15)}, streamShape{[]int{10, 5}, 25, true}},
		{"limit inside a later message", "m/", []clientv3.OpOption{prefix, clientv3.WithLimit(35)}, streamShape{[]int{10, 20, 5}, 100, true}},
		{"limit equal to the keys", "r/", []clientv3.OpOption{prefix, clientv3.WithLimit(25)}, streamShape{[]int{10, 15}, 25, false}},
		{"limit above the keys", "r/", []clientv3.OpOption{prefix, clientv3.WithLimit(30)}, streamShape{[]int{10, 15}, 25, false}},
		{"one key", "r/003", nil, streamShape{[]int{1}, 1, false}},
		{"empty", "none/", []clientv3.OpOption{prefix}, streamShape{[]int{0}, 0, false}},
		{"count only", "m/", []clientv3.OpOption{prefix, clientv3.WithCountOnly()}, streamShape{[]int{0}, 100, false}},
		{"count only with a limit", "m/", []clientv3.OpOption{prefix, clientv3.WithCountOnly(), clientv3.WithLimit(5)}, streamShape{[]int{0}, 100, false}},
		{"keys only", "m/", []clientv3.OpOption{prefix, clientv3.WithKeysOnly()}, streamShape{[]int{10, 20, 40, 30}, 100, false}},
		{"keys only with a limit", "r/", []clientv3.OpOption{prefix, clientv3.WithKeysOnly(), clientv3.WithLimit(12)}, streamShape{[]int{10, 2}, 25, true}},
		{"pinned revision", "r/", []clientv3.OpOption{prefix, clientv3.WithRev(early)}, streamShape{[]int{5}, 5, false}},
		{"serializable", "m/", []clientv3.OpOption{prefix, clientv3.WithSerializable()}, streamShape{[]int{10, 20, 40, 30}, 100, false}},
		{"three prefixes", "m/", []clientv3.OpOption{clientv3.WithRange("t0")}, streamShape{[]int{10, 20, 40, 65}, 135, false}},
	}
}

// getStream reads a GetStream message by message.
func getStream(ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) ([]clientv3.RangeStreamResponse, error) {
	ch, err := cli.GetStream(ctx, key, opts...)
	if err != nil {
		return nil, err
	}
	var msgs []clientv3.RangeStreamResponse
	for msg := range ch {
		if err := msg.Err(); err != nil {
			return msgs, err
		}
		msgs = append(msgs, msg)
	}
	return msgs, nil
}

// checkStream runs c through cli and checks the messages against c.want and
// the kvs against the same request answered by Range; rev is the store's
// revision, which the header must carry.
func checkStream(t *testing.T, cli *clientv3.Client, c streamCase, rev int64) {
	t.Helper()
	ctx := ctxT(t)
	msgs, err := getStream(ctx, cli, c.key, c.opts...)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	var got streamShape
	var kvs []*mvccpb.KeyValue
	for i, msg := range msgs {
		got.kvs = append(got.kvs, len(msg.Kvs))
		kvs = append(kvs, msg.Kvs...)
		if i < len(msgs)-1 {
			if msg.Header != nil || msg.Count != 0 || msg.More {
				t.Fatalf("%s: message %d of %d has header %v count %d more %v; only the last may", c.name, i+1, len(msgs), msg.Header, msg.Count, msg.More)
			}
			continue
		}
		// A serializable read answers at the member's own revision, which
		// may trail.
		serializable := clientv3.OpGet(c.key, c.opts...).IsSerializable()
		if msg.Header == nil || msg.Header.Revision > rev || (!serializable && msg.Header.Revision != rev) ||
			msg.Header.Revision <= 0 || msg.Header.ClusterId == 0 || msg.Header.MemberId == 0 {
			t.Fatalf("%s: last message's header %v, want revision %d with cluster and member", c.name, msg.Header, rev)
		}
		got.count, got.more = msg.Count, msg.More
	}
	if !slices.Equal(got.kvs, c.want.kvs) || got.count != c.want.count || got.more != c.want.more {
		t.Fatalf("%s: messages of %v kvs, count %d, more %v; etcd sends %v kvs, count %d, more %v",
			c.name, got.kvs, got.count, got.more, c.want.kvs, c.want.count, c.want.more)
	}
	whole, err := cli.Get(ctx, c.key, c.opts...)
	if err != nil {
		t.Fatalf("%s: Get: %v", c.name, err)
	}
	if len(whole.Kvs) != len(kvs) {
		t.Fatalf("%s: streamed %d kvs, Get answers %d", c.name, len(kvs), len(whole.Kvs))
	}
	for i := range kvs {
		if !proto.Equal(kvs[i], whole.Kvs[i]) {
			t.Fatalf("%s: kv %d streamed %v, Get answers %v", c.name, i, kvs[i], whole.Kvs[i])
		}
	}
}

// checkCompactedStream: a stream at a compacted revision is etcd's error,
// before any message.
func checkCompactedStream(t *testing.T, cli *clientv3.Client, rev int64) {
	t.Helper()
	msgs, err := getStream(ctxT(t), cli, "r/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err == nil || err.Error() != rpctypes.ErrCompacted.Error() || len(msgs) != 0 {
		t.Fatalf("stream at compacted revision %d: %d messages, %v; want no message and %v", rev, len(msgs), err, rpctypes.ErrCompacted)
	}
}

func smallRequests(cfg *server.Config) { cfg.MaxRequestBytes = streamRequestBytes }

// checkStreams checks every case through each client (named by its key),
// the store at revision rev, then compacts and checks a stream below the
// compacted revision through each.
func checkStreams(t *testing.T, clients map[string]*clientv3.Client, early, rev int64, compact bool) {
	t.Helper()
	names := slices.Sorted(maps.Keys(clients))
	for _, name := range names {
		for _, sc := range streamCases(early) {
			sc.name = name + ": " + sc.name
			checkStream(t, clients[name], sc, rev)
		}
	}
	if !compact {
		return
	}
	if _, err := clients[names[0]].Compact(ctxT(t), early+1); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		checkCompactedStream(t, clients[name], early)
	}
}

// currentRevision is the store's revision, as a linearizable Get answers it.
func currentRevision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	now, err := cli.Get(ctxT(t), "r/000")
	if err != nil {
		t.Fatal(err)
	}
	return now.Header.Revision
}

// TestRangeStreamShape: on one range, every kind of RangeStream is cut into
// messages as etcd cuts it, with header, count and more on the last.
func TestRangeStreamShape(t *testing.T) {
	c := testcluster.Start(t, 1, smallRequests)
	cli := c.Client()
	early := streamData(t, cli)
	checkStreams(t, map[string]*clientv3.Client{"tessera": cli}, early, currentRevision(t, cli), true)
}

// TestRangeStreamShapeOfEtcd: the shapes the cases expect are the ones a
// real etcd v3.7.3 sends, with the same --max-request-bytes.
func TestRangeStreamShapeOfEtcd(t *testing.T) {
	e := startEtcd(t, "--max-request-bytes", strconv.Itoa(streamRequestBytes))
	cli := etcdClient(t, e)
	early := streamData(t, cli)
	checkStreams(t, map[string]*clientv3.Client{"etcd": cli}, early, currentRevision(t, cli), true)
}

// TestRangeStreamShapeAcrossRanges: the same streams over keys split into
// many ranges — at message boundaries and inside messages — and read
// through every member of three, are the same messages.
func TestRangeStreamShapeAcrossRanges(t *testing.T) {
	c := testcluster.Start(t, 3, smallRequests)
	cli := c.Client()
	early := streamData(t, cli)
	splits := []string{"b/03", "m/015", "m/030", "m/070", "r/005", "r/010", "r/017", "t/"}
	for _, key := range splits {
		splitAt(t, c, c.Nodes[0], key)
	}
	waitRanges(t, c, len(splits)+1)
	members := map[string]*clientv3.Client{}
	for _, n := range c.Nodes {
		members[n.Config.Name] = c.Client(n.ClientURL)
	}
	checkStreams(t, members, early, currentRevision(t, cli), true)
}

// TestRangeStreamReadRepeated: when the read layer runs a stream's read again
// (leadership moved after the keys were read), the kvs already sent are not
// sent twice.
func TestRangeStreamReadRepeated(t *testing.T) {
	var reads atomic.Int64
	c := testcluster.Start(t, 1, smallRequests, func(cfg *server.Config) {
		// Every other leader read is tried again.
		cfg.Knobs.RepeatRangeReads = func() bool { return reads.Add(1)%2 == 1 }
	})
	cli := c.Client()
	early := streamData(t, cli)
	checkStreams(t, map[string]*clientv3.Client{"tessera": cli}, early, currentRevision(t, cli), false)
}
