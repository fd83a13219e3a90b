package router

import "testing"

// TestContention: a range counts as contended once a hold was met on it,
// and only that range.
func TestContention(t *testing.T) {
	var c contention
	five, six := &boundsOnly{id: 5}, &boundsOnly{id: 6}
	if c.any([]Range{five, six}) {
		t.Fatal("contended before any hold was met")
	}
	c.met(5)
	if !c.any([]Range{six, five}) || c.any([]Range{six}) {
		t.Fatalf("after a hold met on range 5: %v", c.last)
	}
}
