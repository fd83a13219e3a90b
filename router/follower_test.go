package router

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// fencingLeader is the Internal service of the node leading range 5: it
// answers FenceRange with applied index 100 + the call's number, after gate
// (when set) lets it, or refuses as not the leader.
type fencingLeader struct {
	tesserapb.UnimplementedInternalServer
	gate    chan struct{}
	refuse  bool
	started chan int64 // each call's revision, as it arrives

	mu   sync.Mutex
	revs []int64
}

func (l *fencingLeader) FenceRange(_ context.Context, req *tesserapb.FenceRangeRequest) (*tesserapb.FenceRangeResponse, error) {
	if l.started != nil {
		l.started <- req.Revision
	}
	if l.gate != nil {
		<-l.gate
	}
	if l.refuse {
		return nil, status.Error(codes.FailedPrecondition, (&shard.NotLeaderError{}).Error())
	}
	rev := req.Revision
	if req.Current {
		rev = max(rev, currentRevision)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.revs = append(l.revs, rev)
	return &tesserapb.FenceRangeResponse{AppliedIndex: uint64(100 + len(l.revs)), Revision: rev}, nil
}

// currentRevision is the oracle's current revision on the leader's node.
const currentRevision = 50

// noRead is a read that reads nothing.
func noRead(int64) func(*statemachine.View) (any, error) { return nil }

// followerRange is a replica of range 5 that names replica 2 as leader and
// records the reads it serves after a fence.
type followerRange struct {
	notLeaderRange
	mu    sync.Mutex
	reads map[int64]uint64 // revision read -> applied index waited for
}

func (f *followerRange) ReadAt(context.Context, int64, func(*statemachine.View) (any, error)) (any, error) {
	return nil, &shard.NotLeaderError{LeaderReplicaID: 2}
}

func (f *followerRange) ReadAfter(_ context.Context, index uint64, rev int64, _ func(*statemachine.View) (any, error)) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads[rev] = index
	return rev, nil
}

// TestFollowerReadsShareFenceCalls: linearizable reads on a replica that
// does not lead its range are served there after one FenceRange call to
// the leader; the reads that arrive while a call runs share the next one,
// made at the highest of their revisions, and each read waits for an index
// the leader answered after the read arrived.
func TestFollowerReadsShareFenceCalls(t *testing.T) {
	leader := &fencingLeader{gate: make(chan struct{}), started: make(chan int64, 16)}
	srv := startPeersOf(t, map[uint64]tesserapb.InternalServer{2: leader})
	r := New(Config{}, NewRangeCache(), srv, nil)
	rng := &followerRange{notLeaderRange: notLeaderRange{boundsOnly{id: 5}}, reads: map[int64]uint64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	read := func(rev int64) {
		defer wg.Done()
		if out, at, err := r.readAt(ctx, rng, rev, noRead); err != nil || out != rev || at != rev {
			t.Errorf("read at %d: %v at %d, %v", rev, out, at, err)
		}
	}
	wg.Add(1)
	go read(10)
	if got := <-leader.started; got != 10 {
		t.Fatalf("first call at revision %d, want 10", got)
	}
	// While the first call is held, nine more readers queue for the next.
	for rev := int64(11); rev < 20; rev++ {
		wg.Add(1)
		go read(rev)
	}
	waitFor(t, func() bool {
		r.fences.mu.Lock()
		defer r.fences.mu.Unlock()
		rf := r.fences.byRange[5]
		return rf != nil && rf.next != nil && rf.next.readers == 9
	})
	close(leader.gate)
	wg.Wait()
	if want := []int64{10, 19}; !slices.Equal(leader.revs, want) {
		t.Fatalf("leader fenced at %v, want %v", leader.revs, want)
	}
	for rev := int64(10); rev < 20; rev++ {
		want := uint64(102)
		if rev == 10 {
			want = 101
		}
		if got := rng.reads[rev]; got != want {
			t.Errorf("read at %d waited for index %d, want %d", rev, got, want)
		}
	}
}

// TestFollowerReadLeaderRefuses: when the named leader refuses (it no longer
// leads), the read gives back the replica's own not-leader error, for the
// caller to forward the request as before.
func TestFollowerReadLeaderRefuses(t *testing.T) {
	srv := startPeersOf(t, map[uint64]tesserapb.InternalServer{2: &fencingLeader{refuse: true}})
	r := New(Config{}, NewRangeCache(), srv, nil)
	rng := &followerRange{notLeaderRange: notLeaderRange{boundsOnly{id: 5}}, reads: map[int64]uint64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := r.readAt(ctx, rng, 7, noRead)
	if id, ok := leaderOf(err); !ok || id != 2 {
		t.Fatalf("got %v, want the replica's not-leader error naming 2", err)
	}
	if len(rng.reads) != 0 {
		t.Fatalf("read served without a fence: %v", rng.reads)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFollowerReadAtCurrentRevision: a read that has no revision yet has the
// leader take the oracle's current one while fencing (no oracle call here),
// and reads at it.
func TestFollowerReadAtCurrentRevision(t *testing.T) {
	leader := &fencingLeader{}
	r := New(Config{}, NewRangeCache(), startPeersOf(t, map[uint64]tesserapb.InternalServer{2: leader}), nil)
	rng := &followerRange{notLeaderRange: notLeaderRange{boundsOnly{id: 5}}, reads: map[int64]uint64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, at, err := r.readAt(ctx, rng, 0, noRead)
	if err != nil || at != currentRevision || out != int64(currentRevision) {
		t.Fatalf("read at the current revision: %v at %d, %v; want %d", out, at, err, currentRevision)
	}
	if rng.reads[currentRevision] != 101 {
		t.Fatalf("reads %v, want revision %d after index 101", rng.reads, currentRevision)
	}
}
