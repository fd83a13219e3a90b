package solevoter

import "testing"

func TestFlag(t *testing.T) {
	var f Flag
	calls := 0
	ask := func(sole, known bool) func() (bool, bool) {
		return func() (bool, bool) { calls++; return sole, known }
	}
	if f.Sole(ask(true, false)) {
		t.Fatal("sole while the membership is unknown")
	}
	if !f.Sole(ask(true, true)) || !f.Sole(ask(false, true)) || calls != 2 {
		t.Fatalf("the sole answer was not kept (%d calls)", calls)
	}
	f.NotSole()
	if f.Sole(ask(true, true)) {
		t.Fatal("sole after NotSole")
	}
}
