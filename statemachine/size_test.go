package statemachine

import (
	"fmt"
	"math/rand"
	"testing"
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
