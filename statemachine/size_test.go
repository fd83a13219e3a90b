package statemachine

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestSizeBytesCountsUnflushedData: a range's size includes what is still in
// Pebble's memtables (EstimateDiskUsage alone showed 0 until a flush), and a
// flush moves the bytes to the sstables' count without counting them twice.
func TestSizeBytesCountsUnflushedData(t *testing.T) {
	h := newHarness(t)
	if n := h.rsm.SizeBytes(); n > 4<<10 {
		t.Fatalf("an empty range has size %d", n)
	}
	const puts, valueBytes = 200, 1 << 10
	rng := rand.New(rand.NewSource(1))
	value := make([]byte, valueBytes)
	for i := range puts {
		rng.Read(value) // incompressible: the sstables keep the bytes
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%04d", i), string(value)))
	}
	const written = puts * valueBytes
	before := h.rsm.SizeBytes()
	if before < written {
		t.Fatalf("before a flush the range's size is %d, below the %d bytes of values written", before, written)
	}
	if err := h.store.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := h.store.unflushed.get(testRangeID); n != 0 {
		t.Fatalf("after a flush %d bytes are still counted as unflushed", n)
	}
	after := h.rsm.SizeBytes()
	if after < written || after > 2*written {
		t.Fatalf("after a flush the range's size is %d; %d bytes of values were written", after, written)
	}
}

// TestDropRangeFreesDiskSpace: dropping a range frees its bytes on disk at
// once, even while a Pebble snapshot (another range's view, say) is open,
// which keeps range deletions from freeing anything.
func TestDropRangeFreesDiskSpace(t *testing.T) {
	h := newHarness(t)
	const puts, valueBytes = 2000, 4 << 10
	rng := rand.New(rand.NewSource(1))
	value := make([]byte, valueBytes)
	for i := range puts {
		rng.Read(value)
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%05d", i), string(value)))
	}
	if err := h.store.db.Flush(); err != nil {
		t.Fatal(err)
	}
	const written = puts * valueBytes
	before := h.store.DiskSizeBytes()
	if before < written {
		t.Fatalf("the store holds %d bytes, below the %d written", before, written)
	}
	snap := h.store.db.NewSnapshot()
	defer snap.Close()
	// A view of the range opened before the drop reads everything until it
	// closes; the drop waits for it.
	view, err := h.rsm.View()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.rsm.Close(); err != nil {
		t.Fatal(err)
	}
	dropped := make(chan error, 1)
	go func() { dropped <- h.store.DropRange(testRangeID) }()
	time.Sleep(100 * time.Millisecond)
	resp, err := view.Range(&pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), CountOnly: true})
	if err != nil || resp.Count != puts {
		t.Fatalf("a view open during the drop counts %v keys (%v), want %d", resp.GetCount(), err, puts)
	}
	view.Close()
	if err := <-dropped; err != nil {
		t.Fatal(err)
	}
	// Pebble deletes the files it no longer needs in the background.
	deadline := time.Now().Add(30 * time.Second)
	for {
		after := h.store.DiskSizeBytes()
		if after < before-written/2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store holds %d bytes after the drop, %d before (%d written)", after, before, written)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
