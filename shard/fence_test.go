package shard

import "testing"

// TestFenceRace forces the race of docs/design.md, "Read fence": a write took
// revision 100 from the oracle, a read then took 101 and raised the fence on
// the range before the write reached it. The write must not be admitted with
// 100; with a fresh revision above the fence it is.
func TestFenceRace(t *testing.T) {
	f := newFence()
	if waits := f.raise(101); len(waits) != 0 {
		t.Fatalf("nothing was in flight, yet the read waits for %d writes", len(waits))
	}
	if _, ok := f.admit(100, 1); ok {
		t.Fatal("a write below the fence was admitted")
	}
	if _, ok := f.admit(101, 1); ok {
		t.Fatal("a write at the fence was admitted")
	}
	ids, ok := f.admit(102, 2)
	if !ok || len(ids) != 2 {
		t.Fatalf("a write above the fence was refused: %v %v", ids, ok)
	}
}

// TestFenceWaitsForAdmittedWrites: a read at R waits for exactly the admitted
// writes at or below R.
func TestFenceWaitsForAdmittedWrites(t *testing.T) {
	f := newFence()
	low, _ := f.admit(10, 3)  // 10, 11, 12
	high, _ := f.admit(20, 1) // 20
	waits := f.raise(11)
	if len(waits) != 2 {
		t.Fatalf("read at 11 waits for %d writes, want 2 (revisions 10 and 11)", len(waits))
	}
	f.settle(low[0])
	f.settle(low[1])
	for _, w := range waits {
		select {
		case <-w:
		default:
			t.Fatal("a settled write still blocks the read")
		}
	}
	if got := len(f.raise(15)); got != 1 { // revision 12 still pending
		t.Fatalf("read at 15 waits for %d writes, want 1", got)
	}
	if f.level() != 15 {
		t.Fatalf("fence at %d, want 15", f.level())
	}
	if got := len(f.raise(5)); got != 0 || f.level() != 15 {
		t.Fatalf("lowering: %d waits, level %d", got, f.level())
	}
	f.settle(low[2])
	f.settle(high[0])
	f.settle(high[0]) // twice: harmless
	if got := len(f.raise(100)); got != 0 {
		t.Fatalf("%d writes still pending", got)
	}
}
