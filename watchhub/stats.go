package watchhub

// Stats is what the hub's metrics report at one moment.
type Stats struct {
	// Streams are the open Watch streams; Watchers their watches, of which
	// Unsynced are catching up from history rather than fed from the buffer.
	Streams, Watchers, Unsynced int
	// BufferedEvents are published events not yet released to every live
	// watcher.
	BufferedEvents int
	// ClosedLag is how many revisions the lowest range floor (closed
	// revision) trails the highest: what holds back every watch spanning
	// the ranges between them.
	ClosedLag int64
	// WatcherLag is how many revisions the slowest live watcher trails the
	// highest floor.
	WatcherLag int64
}

// Stats reports the hub's streams, watchers and lags.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := Stats{Streams: len(h.streams), BufferedEvents: len(h.buf)}
	for s := range h.streams {
		st.Watchers += len(s.watchers)
	}
	live := 0
	for _, g := range h.groups {
		live += len(g.watchers)
		if lag := h.maxFloor - g.minSent; len(g.watchers) > 0 && lag > st.WatcherLag {
			st.WatcherLag = lag
		}
	}
	st.Unsynced = max(st.Watchers-live, 0)
	if len(h.floors) > 0 {
		st.ClosedLag = h.maxFloor - h.lowestFloorLocked()
	}
	return st
}
