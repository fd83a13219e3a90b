package statemachine

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
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

// TestHistoryWindowsBoundedInBytes: History cuts a window of large values
// at a revision boundary once it holds HistoryWindowBytes, by keys and by
// the revision index alike, keeps a revision larger than that whole, and
// the windows read one after another give the whole history.
func TestHistoryWindowsBoundedInBytes(t *testing.T) {
	h := newHarness(t)
	big := strings.Repeat("v", 300<<10) // with its previous version, ~600 KiB an event
	for i := range 40 {
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%d", i%5), big))
	}
	// One revision of 20 Puts, each with a previous version: ~12 MiB.
	var ops []*pb.RequestOp
	for i := range 20 {
		ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(fmt.Sprintf("t%02d", i)), Value: []byte(big)}}})
	}
	h.update(txnCmd(t, h.nextRev(), &pb.TxnRequest{Success: ops}), txnCmd(t, h.nextRev(), &pb.TxnRequest{Success: ops}))
	h.update(putCmd(t, h.nextRev(), "last", "1"))
	var byMode [2][]int64
	for i, mode := range []int{historyByKeys, historyByIndex} {
		h.store.historyMode = mode
		for from := int64(2); from <= h.lastRev; {
			evs, covered, err := h.store.History([]byte{0}, []byte{0}, from, h.lastRev, 1000)
			if err != nil || len(evs) == 0 || covered < from {
				t.Fatalf("mode %d: History from %d: %d events to %d: %v", mode, from, len(evs), covered, err)
			}
			size := 0
			for _, ev := range evs {
				size += EventBytes(ev)
				byMode[i] = append(byMode[i], ev.Kv.ModRevision)
			}
			if one := evs[0].Kv.ModRevision == evs[len(evs)-1].Kv.ModRevision; size > HistoryWindowBytes && !one {
				t.Fatalf("mode %d: window from %d holds %d bytes over %d revisions, bound %d", mode, from, size, covered-from+1, HistoryWindowBytes)
			}
			from = covered + 1
		}
	}
	h.store.historyMode = historyEither
	if want := 40 + 2*20 + 1; len(byMode[0]) != want || !slices.Equal(byMode[0], byMode[1]) {
		t.Fatalf("events by keys %v, by the index %v, want %d of them", byMode[0], byMode[1], want)
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
