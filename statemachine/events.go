package statemachine

import (
	"bytes"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Applied is what a range replica publishes for watches (StoreOptions.OnApply)
// each time its applied state moves: after every Update, and with Reset when
// it opens or installs a snapshot.
type Applied struct {
	RangeID uint64
	// Events are the writes of the applied commands, in revision order; the
	// events of one revision (one Txn) are contiguous and sorted by key.
	// Events and the key-values they point to must not be modified.
	Events []*mvccpb.Event
	// Floor is the revision at and below which this replica has applied
	// every command it ever will: every later command carries a revision
	// above it (the state machine refuses the others). It never decreases.
	Floor int64
	// Reset says that events at or below Floor may not have been published
	// (the range just opened, or replaced its state with a snapshot); only
	// events above Floor will be.
	Reset bool
}

// floor is the revision every command applied from now on must exceed: the
// state machine's revision rule. A compaction counts: a write below it would
// be lost to it.
func (st rangeState) floor() int64 {
	return max(st.lastCmdRev, st.currentRev, st.compactedRev)
}

// eventLog collects the events of the commands an Update applies.
type eventLog struct {
	events []*mvccpb.Event
}

func (l *eventLog) put(kv, prev *mvccpb.KeyValue) {
	if l == nil {
		return
	}
	l.events = append(l.events, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev})
}

func (l *eventLog) delete(key []byte, rev int64, prev *mvccpb.KeyValue) {
	if l == nil {
		return
	}
	l.events = append(l.events, &mvccpb.Event{
		Type:   mvccpb.DELETE,
		Kv:     &mvccpb.KeyValue{Key: key, ModRevision: rev},
		PrevKv: prev,
	})
}

// mark returns the log's length, to roll back to if a command fails.
func (l *eventLog) mark() int {
	if l == nil {
		return 0
	}
	return len(l.events)
}

func (l *eventLog) rollback(to int) {
	if l != nil {
		l.events = l.events[:to]
	}
}

// sortFrom sorts the events logged since mark by key: one command's events
// (one revision) come out in the order a read of the history gives them.
func (l *eventLog) sortFrom(mark int) {
	if l == nil {
		return
	}
	slices.SortFunc(l.events[mark:], func(a, b *mvccpb.Event) int { return bytes.Compare(a.Kv.Key, b.Kv.Key) })
}

// all returns the events logged, or nil.
func (l *eventLog) all() []*mvccpb.Event {
	if l == nil {
		return nil
	}
	return l.events
}

// publish hands the range's applied state to StoreOptions.OnApply.
func (r *RangeSM) publish(events []*mvccpb.Event, floor int64, reset bool) {
	if fn := r.store.onApply; fn != nil {
		fn(Applied{RangeID: r.rangeID, Events: events, Floor: floor, Reset: reset})
	}
}
