// Package stop owns a component's goroutines. Every background task starts
// through a Stopper; Stop first quiesces (ShouldQuiesce closes, so tasks wind
// down, and no new task may start), then waits until every task has
// returned. A component that owns a Stopper therefore leaves nothing running
// once its Close returns. CockroachDB's pkg/util/stop is the model.
//
// A component that is part of a larger one runs on a child stopper
// (NewChild): it can be stopped on its own, and stopping the parent stops
// it too, after the parent's own tasks, so that one stopper owns every
// goroutine of a node and stops them in a defined order.
package stop

import (
	"context"
	"errors"
	"slices"
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

	// parent, if any, holds this stopper among its children until it
	// stops.
	parent *Stopper

	mu       sync.Mutex
	stopping bool           // guarded by mu
	tasks    sync.WaitGroup // Add only under mu while !stopping
	// children are the child stoppers not yet stopped, in the order they
	// were made; childrenDone is set once Stop has taken them, after which
	// a new child starts stopped. Both guarded by mu.
	children     []*Stopper
	childrenDone bool
	// stopChildren runs once, in the first Stop; the others wait for it.
	stopChildren sync.Once
}

// New returns a Stopper with no tasks.
func New() *Stopper {
	s := &Stopper{}
	s.quiesceCtx, s.cancelQuiesce = context.WithCancel(context.Background())
	return s
}

// NewChild returns a stopper for a part of the component. Stopping the child
// stops only its tasks (and its children); stopping s stops, once s's own
// tasks have returned, every child not yet stopped, the newest first. A
// child does not quiesce when s does: s's tasks may use it while they wind
// down. Once s has stopped its children, NewChild returns a stopped one.
func (s *Stopper) NewChild() *Stopper {
	child := New()
	child.parent = s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.childrenDone {
		child.stopping = true
		child.childrenDone = true
		child.cancelQuiesce()
		return child
	}
	s.children = append(s.children, child)
	return child
}

// ChildOf is parent.NewChild(), or New() when parent is nil: what a
// component that may run alone uses for its own stopper.
func ChildOf(parent *Stopper) *Stopper {
	if parent == nil {
		return New()
	}
	return parent.NewChild()
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

// Stop quiesces, waits until every task has returned, then stops the
// children not yet stopped, the newest first. It may be called more than
// once, and from several goroutines; each call returns once the tasks and
// the children are done. It must not be called from a task.
func (s *Stopper) Stop() {
	s.Quiesce()
	s.tasks.Wait()
	s.stopChildren.Do(func() {
		s.mu.Lock()
		children := s.children
		s.children, s.childrenDone = nil, true
		s.mu.Unlock()
		for i := len(children) - 1; i >= 0; i-- {
			children[i].Stop()
		}
		if s.parent != nil {
			s.parent.forget(s)
		}
	})
}

// forget drops a stopped child.
func (s *Stopper) forget(child *Stopper) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.children, child); i >= 0 {
		s.children = slices.Delete(s.children, i, i+1)
	}
}
