package placement

import (
	"context"
	"sync"
	"testing"
)

func TestLocalOracleStrictlyIncreasing(t *testing.T) {
	o := NewLocalOracle(1)
	ctx := context.Background()
	const workers, perWorker = 8, 1000
	seen := make(chan int64, workers*perWorker)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := int64(0)
			for range perWorker {
				r, err := o.Next(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if r <= prev {
					t.Errorf("revision went backwards within one caller: %d after %d", r, prev)
				}
				prev = r
				seen <- r
			}
		}()
	}
	wg.Wait()
	close(seen)
	unique := map[int64]bool{}
	for r := range seen {
		if r <= 1 {
			t.Fatalf("revision %d not above floor 1", r)
		}
		if unique[r] {
			t.Fatalf("revision %d handed out twice", r)
		}
		unique[r] = true
	}
}

func TestLocalOracleObserve(t *testing.T) {
	o := NewLocalOracle(1)
	ctx := context.Background()
	o.Observe(100)
	o.Observe(50) // lower observations never move it back
	if r, _ := o.Next(ctx); r != 101 {
		t.Fatalf("Next after Observe(100) = %d, want 101", r)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := o.Next(cctx); err == nil {
		t.Fatal("Next with a cancelled context succeeded")
	}
}
