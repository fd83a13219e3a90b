package bench

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestFormatKey(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		n      int64
		size   int
		want   string
	}{
		{"p/", 7, 8, "p/000007"},
		{"p/", 123456, 8, "p/123456"},
		{"p/", 1234567, 8, "p/1234567"}, // too long for size: longer key, never truncated
		{"", 0, 3, "000"},
	} {
		if got := formatKey(tc.prefix, tc.n, tc.size); got != tc.want {
			t.Errorf("formatKey(%q, %d, %d) = %q, want %q", tc.prefix, tc.n, tc.size, got, tc.want)
		}
	}
}

func TestKeyGenSequentialWrapsAtSpace(t *testing.T) {
	g := KeyGen{Prefix: "p/", SizeBytes: 6, Space: 3, Sequential: true}
	var got []string
	for seq := range int64(7) {
		got = append(got, g.Key(seq, nil))
	}
	want := "p/0000 p/0001 p/0002 p/0000 p/0001 p/0002 p/0000"
	if strings.Join(got, " ") != want {
		t.Fatalf("keys %v, want %s", got, want)
	}
	unbounded := KeyGen{Prefix: "p/", SizeBytes: 6, Sequential: true}
	if k := unbounded.Key(12345, nil); k != "p/12345" {
		t.Fatalf("unbounded sequential key %q", k)
	}
}

func TestKeyGenRandomStaysInSpaceWithFixedSize(t *testing.T) {
	g := KeyGen{Prefix: "r/", SizeBytes: 16, Space: 50}
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string]bool{}
	for seq := range int64(5000) {
		k := g.Key(seq, rng)
		if len(k) != 16 || !strings.HasPrefix(k, "r/") {
			t.Fatalf("key %q: want 16 bytes under r/", k)
		}
		if k >= g.PrefixEnd() || k < g.KeyAt(0) || k > g.KeyAt(49) {
			t.Fatalf("key %q outside the space", k)
		}
		seen[k] = true
	}
	if len(seen) != 50 {
		t.Fatalf("5000 random draws hit %d of 50 keys", len(seen))
	}
	// The same seed gives the same keys.
	a, b := rand.New(rand.NewPCG(9, 9)), rand.New(rand.NewPCG(9, 9))
	for seq := range int64(100) {
		if g.Key(seq, a) != g.Key(seq, b) {
			t.Fatal("same seed, different keys")
		}
	}
}

func TestMinKeySize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want int
	}{{1, 3}, {10, 3}, {11, 4}, {100000, 7}} {
		if got := minKeySize("x/", tc.n); got != tc.want {
			t.Errorf("minKeySize(x/, %d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"p/": "p0", "a\xff": "b", "\xff\xff": "\x00"} {
		if got := prefixEnd(in); got != want {
			t.Errorf("prefixEnd(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValueGenSizesAndVariety(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, size := range []int{0, 1, 256, 4096} {
		v := NewValueGen(size, 7)
		seen := map[string]bool{}
		for range 20 {
			val := v.Value(rng)
			if len(val) != size {
				t.Fatalf("value of %d bytes, want %d", len(val), size)
			}
			seen[val] = true
		}
		if size >= 256 && len(seen) < 19 {
			t.Errorf("size %d: only %d distinct values in 20", size, len(seen))
		}
	}
	v := NewValueGen(10240, 7)
	for _, size := range []int{1024, 5000, 10240} {
		if got := len(v.Sized(size, rng)); got != size {
			t.Errorf("Sized(%d) gave %d bytes", size, got)
		}
	}
}

func TestScheduledOffset(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		rate float64
		want time.Duration
	}{
		{0, 100, 0},
		{1, 100, 10 * time.Millisecond},
		{250, 100, 2500 * time.Millisecond},
		{3, 0.5, 6 * time.Second},
		{1000000, 0, 0}, // no limit
	} {
		if got := scheduledOffset(tc.n, tc.rate); got != tc.want {
			t.Errorf("scheduledOffset(%d, %v) = %v, want %v", tc.n, tc.rate, got, tc.want)
		}
	}
	// Over any whole second, a rate-limited schedule admits exactly rate
	// requests.
	const rate = 1000.0
	admitted := 0
	for n := int64(0); scheduledOffset(n, rate) < time.Second; n++ {
		admitted++
	}
	if admitted != rate {
		t.Fatalf("%d requests scheduled in the first second at %v/s", admitted, rate)
	}
}
