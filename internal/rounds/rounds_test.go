package rounds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tesserakv/tessera/internal/stop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newStopper returns a stopper that the test stops when it ends.
func newStopper(t *testing.T) *stop.Stopper {
	s := stop.New()
	t.Cleanup(s.Stop)
	return s
}

// roundError names the round that served a caller.
type roundError int64

func (e roundError) Error() string { return fmt.Sprintf("round %d", int64(e)) }

func roundOf(t *testing.T, err error) int64 {
	t.Helper()
	var re roundError
	if !errors.As(err, &re) {
		t.Fatalf("Wait returned %v, not a round's error", err)
	}
	return int64(re)
}

// TestRoundBegunAfterCaller: every caller is served by a round that began
// after it called, and the callers that arrive during a round share the
// next one.
func TestRoundBegunAfterCaller(t *testing.T) {
	var started atomic.Int64
	release := make(chan struct{})
	r := &Rounds{Stopper: newStopper(t), Round: func() error {
		n := started.Add(1)
		<-release
		return roundError(n)
	}}
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- r.Wait(ctx) }()
	for started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// Round 1 is running: these callers must not be served by it.
	const n = 20
	var wg sync.WaitGroup
	got := make([]int64, n)
	joined := make(chan struct{}, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			joined <- struct{}{}
			got[i] = roundOf(t, r.Wait(ctx))
		}()
	}
	for range n {
		<-joined
	}
	// Let them all queue for the next round before round 1 ends.
	for waiting(r) < n {
		time.Sleep(time.Millisecond)
	}
	release <- struct{}{}
	if got := roundOf(t, <-first); got != 1 {
		t.Fatalf("first caller served by round %d", got)
	}
	close(release)
	wg.Wait()
	for i, g := range got {
		if g < 2 {
			t.Fatalf("caller %d, which called during round 1, was served by round %d", i, g)
		}
	}
	if s := started.Load(); s != 2 {
		t.Fatalf("%d rounds for 21 callers, of whom 20 waited together", s)
	}
}

// waiting is how many callers wait for the next round.
func waiting(r *Rounds) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next == nil {
		return 0
	}
	return r.next.callers
}

// TestLoneCallerNeverWaitsForGap: a caller alone is served at once, however
// long MinGap is (the gap applies only after a shared round).
func TestLoneCallerNeverWaitsForGap(t *testing.T) {
	rounds := 0
	r := &Rounds{Stopper: newStopper(t), MinGap: time.Hour, Round: func() error { rounds++; return nil }}
	for range 10 {
		if err := r.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if rounds != 10 {
		t.Fatalf("%d rounds for 10 callers one after another", rounds)
	}
}

// TestGapAfterSharedRound: after a round shared by several callers, the
// next begins no sooner than MinGap after it.
func TestGapAfterSharedRound(t *testing.T) {
	const gap = 30 * time.Millisecond
	var mu sync.Mutex
	var starts []time.Time
	release := make(chan struct{})
	r := &Rounds{Stopper: newStopper(t), MinGap: gap, Round: func() error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		<-release
		return nil
	}}
	ctx := context.Background()
	var wg sync.WaitGroup
	wait := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Wait(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	// Round 1 (one caller), then three callers share round 2.
	wait()
	for len(startsNow(&mu, &starts)) < 1 {
		time.Sleep(time.Millisecond)
	}
	for range 3 {
		wait()
	}
	for waiting(r) < 3 {
		time.Sleep(time.Millisecond)
	}
	release <- struct{}{}
	for len(startsNow(&mu, &starts)) < 2 {
		time.Sleep(time.Millisecond)
	}
	// Round 2 is shared and running: a caller now waits for round 3, which
	// must begin at least gap after round 2 did.
	wait()
	for waiting(r) < 1 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	s := startsNow(&mu, &starts)
	if len(s) != 3 {
		t.Fatalf("%d rounds, want 3", len(s))
	}
	if d := s[2].Sub(s[1]); d < gap {
		t.Fatalf("round 3 began %v after the shared round 2, want at least %v", d, gap)
	}
}

func startsNow(mu *sync.Mutex, starts *[]time.Time) []time.Time {
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Time(nil), *starts...)
}

// TestCallerGivesUp: a caller whose context ends returns its error; the
// round goes on for the others.
func TestCallerGivesUp(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int64
	r := &Rounds{Stopper: newStopper(t), Round: func() error { started.Add(1); <-release; return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	other := make(chan error, 1)
	go func() { other <- r.Wait(context.Background()) }()
	for started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- r.Wait(ctx) }()
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(release)
	if err := <-other; err != nil {
		t.Fatal(err)
	}
}

// TestStoppedStartsNoRound: once the stopper stops, Wait fails at once and
// no round runs; the runner of earlier rounds has returned.
func TestStoppedStartsNoRound(t *testing.T) {
	s := stop.New()
	var rounds atomic.Int64
	r := &Rounds{Stopper: s, Round: func() error { rounds.Add(1); return nil }}
	if err := r.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	for range 2 {
		if err := r.Wait(context.Background()); !errors.Is(err, stop.ErrStopping) {
			t.Fatalf("Wait after Stop = %v, want %v", err, stop.ErrStopping)
		}
	}
	if n := rounds.Load(); n != 1 {
		t.Fatalf("%d rounds ran, want 1 (none after Stop)", n)
	}
}
