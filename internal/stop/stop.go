// Package stop owns a component's goroutines. Every background task starts
// through a Stopper; Stop first quiesces (ShouldQuiesce closes, so tasks wind
// down, and no new task may start), then waits until every task has
// returned. A component that owns a Stopper therefore leaves nothing running
// once its Close returns. CockroachDB's pkg/util/stop is the model.
package stop

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrStopping is returned when a task is started after Stop began.
var ErrStopping = errors.New("stop: stopping")

// Stopper runs tasks and stops them. The zero value is not usable; call New.
type Stopper struct {
	// quiesceCtx is cancelled when Stop begins: its Done is ShouldQuiesce.
	quiesceCtx    context.Context
	cancelQuiesce context.CancelFunc

	mu       sync.Mutex
	stopping bool           // guarded by mu
	tasks    sync.WaitGroup // Add only under mu while !stopping
}

// New returns a Stopper with no tasks.
func New() *Stopper {
	s := &Stopper{}
	s.quiesceCtx, s.cancelQuiesce = context.WithCancel(context.Background())
	return s
}

// ShouldQuiesce is closed when Stop begins: long-running tasks select on it
// and return.
func (s *Stopper) ShouldQuiesce() <-chan struct{} { return s.quiesceCtx.Done() }

// Context is cancelled when Stop begins: the context of a task's calls that
// are bounded otherwise.
func (s *Stopper) Context() context.Context { return s.quiesceCtx }

// RunAsync runs fn in a goroutine of its own that Stop waits for. Once Stop
// has begun it starts nothing and returns ErrStopping.
func (s *Stopper) RunAsync(fn func()) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return ErrStopping
	}
	s.tasks.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.tasks.Done()
		fn()
	}()
	return nil
}

// Every runs fn every interval in a task of its own until Stop begins.
func (s *Stopper) Every(interval time.Duration, fn func(now time.Time)) error {
	return s.RunAsync(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-s.quiesceCtx.Done():
				return
			case now := <-tick.C:
				fn(now)
			}
		}
	})
}

// WithCancelOnQuiesce returns a context derived from ctx that is also
// cancelled when Stop begins.
func (s *Stopper) WithCancelOnQuiesce(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stopWatching := context.AfterFunc(s.quiesceCtx, cancel)
	return ctx, func() { stopWatching(); cancel() }
}

// WithTimeout returns a context for one step of a task: it ends after d, or
// when Stop begins, whichever comes first.
func (s *Stopper) WithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.Context(), d)
}

// Quiesce begins the stop without waiting: ShouldQuiesce closes and no new
// task starts. It may be called more than once.
func (s *Stopper) Quiesce() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopping {
		s.stopping = true
		s.cancelQuiesce()
	}
}

// Stop quiesces and waits until every task has returned. It may be called
// more than once, and from several goroutines; each call returns once the
// tasks are done. It must not be called from a task.
func (s *Stopper) Stop() {
	s.Quiesce()
	s.tasks.Wait()
}
