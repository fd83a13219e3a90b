package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

var errBusy = errors.New("busy")

// TestDoStopsWhenDone: an attempt that succeeds, or fails for good, is not
// repeated.
func TestDoStopsWhenDone(t *testing.T) {
	p := Policy{Budget: time.Second, Step: time.Millisecond, MaxPause: time.Millisecond}
	for _, want := range []error{nil, errBusy} {
		calls := 0
		err := p.Do(context.Background(), nil, func() (bool, error) { calls++; return false, want })
		if err != want || calls != 1 {
			t.Fatalf("Do = %v after %d calls, want %v after 1", err, calls, want)
		}
	}
}

// TestDoRetriesUntilSuccess: again=true retries, and the first success ends
// it.
func TestDoRetriesUntilSuccess(t *testing.T) {
	p := Policy{Budget: time.Minute, Step: time.Millisecond, MaxPause: 2 * time.Millisecond}
	calls := 0
	err := p.Do(context.Background(), nil, func() (bool, error) {
		calls++
		if calls < 5 {
			return true, errBusy
		}
		return false, nil
	})
	if err != nil || calls != 5 {
		t.Fatalf("Do = %v after %d calls, want nil after 5", err, calls)
	}
}

// TestDoBudget: once the budget is spent the last error is returned, and no
// attempt starts after it: an attempt that outlasts the budget is the last.
func TestDoBudget(t *testing.T) {
	p := Policy{Budget: 30 * time.Millisecond, Step: time.Millisecond, MaxPause: time.Millisecond}
	calls := 0
	err := p.Do(context.Background(), nil, func() (bool, error) {
		calls++
		time.Sleep(2 * p.Budget)
		return true, errBusy
	})
	if !errors.Is(err, errBusy) || calls != 1 {
		t.Fatalf("Do = %v after %d attempts, want the last attempt's error after 1", err, calls)
	}
}

// TestDoContextAndQuiesce: a pause ends with ctx (its error) or quiesce (the
// last attempt's error).
func TestDoContextAndQuiesce(t *testing.T) {
	p := Policy{Budget: time.Minute, Step: time.Minute, MaxPause: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Do(ctx, nil, func() (bool, error) { return true, errBusy }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with a cancelled context = %v", err)
	}
	quiesce := make(chan struct{})
	close(quiesce)
	if err := p.Do(context.Background(), quiesce, func() (bool, error) { return true, errBusy }); !errors.Is(err, errBusy) {
		t.Fatalf("Do while quiescing = %v, want the last error", err)
	}
}
