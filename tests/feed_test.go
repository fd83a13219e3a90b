package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// internalClient connects to a node's Internal service.
func internalClient(t *testing.T, n *testcluster.Node) tesserapb.InternalClient {
	t.Helper()
	cc, err := grpc.NewClient(strings.TrimPrefix(n.ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return tesserapb.NewInternalClient(cc)
}

// TestRangeFeed: on a 3-node cluster split in two, a member that does not
// lead the range ["", "m") feeds it from a revision while three clients
// write keys of both ranges: the feed carries exactly the writes of its
// range from that revision on, in revision order, with prev_kv for
// updates, and never reports a closed revision below an event it sends
// later; a feed started after the writes reads the same from history. A
// feed from before the compacted revision ends with it; a range
// the node does not have is refused.
func TestRangeFeed(t *testing.T) {
	c := testcluster.Start(t, 3)
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	ctx := ctxT(t)
	cli := c.Client()
	first, err := cli.Put(ctx, "a-before", "x") // below the feed's start
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := c.Nodes[0].Server.Testing().Ranges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rangeID, leader uint64
	for _, r := range ranges {
		if len(r.StartKey) == 0 {
			rangeID, leader = r.RangeId, r.LeaderNodeId
		}
	}
	feeder := c.Nodes[int(leader)%len(c.Nodes)] // node IDs are 1-based: the next node
	feed, err := internalClient(t, feeder).RangeFeed(ctx, &tesserapb.RangeFeedRequest{RangeId: rangeID, StartRevision: first.Header.Revision + 1, CloseIntervalMs: 20})
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu     sync.Mutex
		wanted = map[int64]string{} // revision -> key, the writes of ["", "m")
		last   int64
		wg     sync.WaitGroup
	)
	for w := range 3 {
		wg.Go(func() {
			for i := range 30 {
				key := fmt.Sprintf("%c-%d-%d", "bgpw"[i%4], w, i%5) // b, g in the range; p, w in the other
				var rev int64
				if i%7 == 6 {
					resp, err := cli.Delete(ctx, key)
					if err != nil {
						t.Error(err)
						return
					}
					if resp.Deleted == 0 {
						continue // deleted nothing: no event
					}
					rev = resp.Header.Revision
				} else {
					resp, err := cli.Put(ctx, key, fmt.Sprint(i))
					if err != nil {
						t.Error(err)
						return
					}
					rev = resp.Header.Revision
				}
				mu.Lock()
				if key < "m" {
					wanted[rev] = key
				}
				last = max(last, rev)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	var want []int64
	for rev := range wanted {
		want = append(want, rev)
	}
	slices.Sort(want)
	got, prevKVs := readFeed(t, feed, last)
	if !slices.Equal(got, want) {
		t.Fatalf("feed events at %v, writes of the range at %v", got, want)
	}
	if prevKVs == 0 {
		t.Fatal("no event carried prev_kv, though keys were written again")
	}
	// The same from history: a feed started after the writes.
	replay, err := internalClient(t, feeder).RangeFeed(ctx, &tesserapb.RangeFeedRequest{RangeId: rangeID, StartRevision: first.Header.Revision + 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readFeed(t, replay, last); !slices.Equal(got, want) {
		t.Fatalf("feed from history: events at %v, writes of the range at %v", got, want)
	}
	// From before the compacted revision: the feed says so and ends.
	if _, err := cli.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	old, err := internalClient(t, feeder).RangeFeed(ctx, &tesserapb.RangeFeedRequest{RangeId: rangeID, StartRevision: first.Header.Revision})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := old.Recv()
	if err != nil || resp.CompactRevision != last {
		t.Fatalf("feed from a compacted revision: got %v, %v; want compact revision %d", resp, err, last)
	}
	if _, err := old.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("feed from a compacted revision went on: %v", err)
	}

	unknown, err := internalClient(t, feeder).RangeFeed(ctx, &tesserapb.RangeFeedRequest{RangeId: 999})
	if err == nil {
		_, err = unknown.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("feed of a range the node lacks: %v, want FailedPrecondition", err)
	}
}

// readFeed reads a range feed until its closed revision reaches until and
// returns the revisions of its events and how many carried prev_kv,
// failing the test if an event comes at or below a closed revision already
// reported, lies outside ["", "m"), or the closed revision goes back.
func readFeed(t *testing.T, feed tesserapb.Internal_RangeFeedClient, until int64) (revs []int64, prevKVs int) {
	t.Helper()
	var closed int64
	for closed < until {
		resp, err := feed.Recv()
		if err != nil {
			t.Fatalf("feed ended at closed revision %d, writes up to %d: %v", closed, until, err)
		}
		for _, b := range resp.Events {
			ev := &mvccpb.Event{}
			if err := proto.Unmarshal(b, ev); err != nil {
				t.Fatal(err)
			}
			rev := ev.Kv.ModRevision
			if rev <= closed {
				t.Fatalf("event at %d after closed revision %d", rev, closed)
			}
			if bytes.Compare(ev.Kv.Key, []byte("m")) >= 0 {
				t.Fatalf("event of key %q, outside the range", ev.Kv.Key)
			}
			if ev.PrevKv != nil {
				prevKVs++
			}
			revs = append(revs, rev)
		}
		if resp.ClosedRevision < closed {
			t.Fatalf("closed revision went back from %d to %d", closed, resp.ClosedRevision)
		}
		closed = resp.ClosedRevision
	}
	return revs, prevKVs
}
