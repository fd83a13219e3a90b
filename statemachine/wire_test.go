package statemachine

import (
	"bytes"
	"testing"
)

// TestWireKVsChunks: a small answer takes a small chunk (a Get must not
// allocate a list's chunk size), a large one grows its chunks up to
// maxChunkBytes, and a kv larger than that gets a chunk of its own.
func TestWireKVsChunks(t *testing.T) {
	var one WireKVs
	one.addStored([]byte("k"), bytes.Repeat([]byte{1}, 256))
	if c := one.Chunks(); len(c) != 1 || cap(c[0]) > firstChunkBytes {
		t.Fatalf("one small kv: %d chunks, first of capacity %d, want 1 of at most %d", len(c), cap(c[0]), firstChunkBytes)
	}

	var many WireKVs
	value := bytes.Repeat([]byte{2}, 4096)
	total := 0
	for many.Len() < 1000 {
		many.addStored([]byte("key"), value)
	}
	for _, c := range many.Chunks() {
		total += len(c)
		if cap(c) > maxChunkBytes {
			t.Fatalf("chunk of capacity %d, above %d", cap(c), maxChunkBytes)
		}
	}
	if n := len(many.Chunks()); n > total/maxChunkBytes+12 {
		t.Fatalf("%d bytes in %d chunks: chunks do not grow", total, n)
	}

	var big WireKVs
	big.addStored([]byte("k"), make([]byte, 2*maxChunkBytes))
	if c := big.Chunks(); len(c) != 1 || len(c[0]) <= 2*maxChunkBytes {
		t.Fatalf("one kv of %d bytes: %d chunks", 2*maxChunkBytes, len(c))
	}
}
