package statemachine

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestRevisionIndexBuiltForOldStores: a store whose versions have no
// revision index entries (made before the index existed) gets them when it
// opens, and History reads the same events by keys and by the index.
func TestRevisionIndexBuiltForOldStores(t *testing.T) {
	h := newHarness(t)
	for i := range 30 {
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%d", i%7), fmt.Sprintf("v%d", i)))
	}
	if err := h.rsm.Sync(); err != nil {
		t.Fatal(err)
	}
	// Take the index away, as a store made before it would be.
	b := h.store.db.NewBatch()
	if err := b.DeleteRange([]byte{prefixRevIndex}, []byte{prefixRevIndex + 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(revIndexBuiltKey, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	h.store.historyMode = historyByIndex
	if evs, _, err := h.store.History([]byte{0}, []byte{0}, 2, h.lastRev, 1000); err != nil || len(evs) != 0 {
		t.Fatalf("without the index, History by the index read %d events (%v), want none", len(evs), err)
	}
	h.restart()
	checkHistoryModes(t, h, 0, 2, h.lastRev)
	h.store.historyMode = historyByIndex
	if evs, _, err := h.store.History([]byte{0}, []byte{0}, 2, h.lastRev, 1000); err != nil || len(evs) != 30 {
		t.Fatalf("after the restart, History by the index read %d events (%v), want 30", len(evs), err)
	}
}

// BenchmarkHistory reads 1,000 events from the middle of the history of
// 100,000 keys written twice, by keys and by the revision index: by keys a
// read costs every version of the span, by the index only the window's.
func BenchmarkHistory(b *testing.B) {
	h := newHarness(b)
	const keys = 100_000
	value := string(make([]byte, 256))
	for round := range 2 {
		var cmds [][]byte
		for i := range keys {
			cmds = append(cmds, putCmd(b, h.nextRev(), fmt.Sprintf("k%07d", (i*7919)%keys), value))
			if len(cmds) == 1000 {
				h.update(cmds...)
				cmds = nil
			}
		}
		_ = round
	}
	if err := h.store.db.Flush(); err != nil {
		b.Fatal(err)
	}
	from := h.lastRev - keys // the second round's first write
	for _, mode := range []struct {
		name string
		mode int
	}{{"keys", historyByKeys}, {"index", historyByIndex}, {"either", historyEither}} {
		b.Run(mode.name, func(b *testing.B) {
			h.store.historyMode = mode.mode
			for b.Loop() {
				evs, _, err := h.store.History([]byte{0}, []byte{0}, from, h.lastRev, 1000)
				if err != nil || len(evs) != 1000 {
					b.Fatalf("%d events: %v", len(evs), err)
				}
			}
		})
	}
}
