package stop

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStopWaitsForTasks: Stop returns only after every task has returned,
// and tasks see ShouldQuiesce close.
func TestStopWaitsForTasks(t *testing.T) {
	s := New()
	var done atomic.Int32
	for range 10 {
		if err := s.RunAsync(func() {
			<-s.ShouldQuiesce()
			time.Sleep(10 * time.Millisecond)
			done.Add(1)
		}); err != nil {
			t.Fatal(err)
		}
	}
	s.Stop()
	if n := done.Load(); n != 10 {
		t.Fatalf("Stop returned with %d of 10 tasks done", n)
	}
}

// TestNoTaskAfterStop: once Stop began, no task starts.
func TestNoTaskAfterStop(t *testing.T) {
	s := New()
	s.Stop()
	ran := false
	if err := s.RunAsync(func() { ran = true }); !errors.Is(err, ErrStopping) {
		t.Fatalf("RunAsync after Stop: %v", err)
	}
	if err := s.Every(time.Millisecond, func(time.Time) { ran = true }); !errors.Is(err, ErrStopping) {
		t.Fatalf("Every after Stop: %v", err)
	}
	if ran {
		t.Fatal("a task ran after Stop")
	}
}

// TestEvery: the function runs on the ticker until Stop.
func TestEvery(t *testing.T) {
	s := New()
	var n atomic.Int32
	ran := make(chan struct{}, 1)
	if err := s.Every(time.Millisecond, func(time.Time) {
		n.Add(1)
		select {
		case ran <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	<-ran
	s.Stop()
	after := n.Load()
	time.Sleep(5 * time.Millisecond)
	if n.Load() != after {
		t.Fatal("Every ran after Stop returned")
	}
}

// TestWithCancelOnQuiesce: the context ends when Stop begins, and its own
// cancel releases it without a stop.
func TestWithCancelOnQuiesce(t *testing.T) {
	s := New()
	ctx, cancel := s.WithCancelOnQuiesce(context.Background())
	defer cancel()
	other, cancelOther := s.WithCancelOnQuiesce(context.Background())
	cancelOther()
	if other.Err() == nil {
		t.Fatal("cancel did not end the context")
	}
	select {
	case <-ctx.Done():
		t.Fatal("context ended before Stop")
	default:
	}
	s.Stop()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context still live after Stop")
	}
}

// TestWithTimeout: the context ends at its timeout, or when Stop begins.
func TestWithTimeout(t *testing.T) {
	s := New()
	short, cancel := s.WithTimeout(time.Millisecond)
	defer cancel()
	<-short.Done()
	long, cancelLong := s.WithTimeout(time.Hour)
	defer cancelLong()
	s.Stop()
	select {
	case <-long.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context still live after Stop")
	}
}

// TestChildren: a child stops on its own; the parent stops the others once
// its own tasks have returned, the newest first; a child made after that is
// stopped already.
func TestChildren(t *testing.T) {
	parent := New()
	var order []string
	var mu sync.Mutex
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, s)
	}
	first, second, alone := parent.NewChild(), parent.NewChild(), parent.NewChild()
	for name, s := range map[string]*Stopper{"first": first, "second": second, "alone": alone} {
		if err := s.RunAsync(func() { <-s.ShouldQuiesce(); note(name) }); err != nil {
			t.Fatal(err)
		}
	}
	alone.Stop()
	if err := parent.RunAsync(func() {
		<-parent.ShouldQuiesce()
		select {
		case <-first.ShouldQuiesce():
			t.Error("a child quiesced with its parent")
		default:
		}
		note("parent")
	}); err != nil {
		t.Fatal(err)
	}
	parent.Stop()
	if got := strings.Join(order, " "); got != "alone parent second first" {
		t.Fatalf("stopped in order %q", got)
	}
	if err := parent.NewChild().RunAsync(func() {}); !errors.Is(err, ErrStopping) {
		t.Fatalf("RunAsync on a child made after Stop: %v", err)
	}
}
