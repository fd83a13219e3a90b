package shard

import (
	"reflect"
	"testing"
	"time"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func TestLeaseClock(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newLeaseClock()
	c.grant(1, 10, t0) // inactive: ignored
	if _, ok := c.renew(1, t0); ok {
		t.Fatal("inactive clock renewed a lease")
	}
	c.promote([]*tesserapb.LeaseRecord{{Id: 1, TtlSeconds: 10}, {Id: 2, TtlSeconds: 5}}, t0)
	if got := c.expired(t0.Add(4 * time.Second)); len(got) != 0 {
		t.Fatalf("expired at +4s = %v, want none", got)
	}
	if got := c.expired(t0.Add(5 * time.Second)); !reflect.DeepEqual(got, []int64{2}) {
		t.Fatalf("expired at +5s = %v, want [2]", got)
	}
	if ttl, ok := c.renew(1, t0.Add(8*time.Second)); !ok || ttl != 10 {
		t.Fatalf("renew(1) = %d,%v", ttl, ok)
	}
	if _, ok := c.renew(2, t0.Add(8*time.Second)); ok {
		t.Fatal("renewed an expired lease")
	}
	if left, _ := c.remaining(1, t0.Add(8*time.Second+time.Millisecond)); left != 10 {
		t.Fatalf("remaining(1) = %d, want 10 (rounded up)", left)
	}
	if got := c.expired(t0.Add(17 * time.Second)); !reflect.DeepEqual(got, []int64{2}) {
		t.Fatalf("expired at +17s = %v, want [2]", got)
	}
	if got := c.expired(t0.Add(18 * time.Second)); !reflect.DeepEqual(got, []int64{1, 2}) {
		t.Fatalf("expired at +18s = %v, want [1 2]", got)
	}
	c.remove(2)
	c.grant(3, 7, t0)
	if left, ok := c.remaining(3, t0.Add(time.Second)); !ok || left != 6 {
		t.Fatalf("remaining(3) = %d,%v want 6,true", left, ok)
	}
	// A lease whose revocation began is neither renewed nor reported, and
	// falls due again at the retry time given.
	c.revoking(3, t0.Add(3*time.Second))
	if _, ok := c.renew(3, t0.Add(time.Second)); ok {
		t.Fatal("renewed a lease being revoked")
	}
	if _, ok := c.remaining(3, t0.Add(time.Second)); ok {
		t.Fatal("reported a lease being revoked")
	}
	if got := c.expired(t0.Add(3 * time.Second)); !reflect.DeepEqual(got, []int64{3}) {
		t.Fatalf("expired at +3s = %v, want [3]", got)
	}
	// A new leader finds the marked record: due at once.
	c.promote([]*tesserapb.LeaseRecord{{Id: 4, TtlSeconds: 60, Revoking: true}, {Id: 5, TtlSeconds: 60}}, t0)
	if got := c.expired(t0); !reflect.DeepEqual(got, []int64{4}) {
		t.Fatalf("expired after promote = %v, want [4]", got)
	}
	if _, ok := c.renew(4, t0); ok {
		t.Fatal("renewed a marked lease after promote")
	}
	c.demote()
	if c.isActive() || len(c.expired(t0.Add(time.Hour))) != 0 {
		t.Fatal("demoted clock still expires leases")
	}
}
