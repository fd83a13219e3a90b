package statemachine

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func splitCmd(t testing.TB, splitKey string, childID uint64) []byte {
	return mustMarshal(t, &tesserapb.Command{Op: &tesserapb.Command_Split{
		Split: &tesserapb.SplitCommand{SplitKey: []byte(splitKey), NewRangeId: childID},
	}})
}

// TestSplitSurvivesRestart: after a split and writes on both sides, closing
// and reopening the Store and opening both ranges gives the same bounds,
// generations, applied indexes and data, and replays no split.
func TestSplitSurvivesRestart(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 10; i++ {
		h.update(putCmd(t, h.nextRev(), fmt.Sprintf("k%d", i), "v"))
	}
	if err := ErrorFromResult(h.update(splitCmd(t, "k5", 8))[0]); err != nil {
		t.Fatal(err)
	}
	if got := h.flushSplitLog(); !strings.HasPrefix(got, "on-split 7 -> 8: child opened at applied index 0") {
		t.Fatalf("OnSplit log %q", got)
	}
	h.update(putCmd(t, h.nextRev(), "k0", "parent"))
	h.updateOn(8, putCmd(t, h.nextRev(), "k9", "child"))
	if err := h.rsm.Sync(); err != nil {
		t.Fatal(err)
	}
	type snapshot struct {
		start, end string
		generation uint64
		index      uint64
		dump       string
	}
	capture := func() map[uint64]snapshot {
		out := map[uint64]snapshot{}
		for _, id := range []uint64{testRangeID, 8} {
			rsm := h.rangeSM(id)
			start, end := rsm.Bounds()
			out[id] = snapshot{string(start), string(end), rsm.Generation(), *h.indexOf(id), h.dumpOf(t, id)}
		}
		return out
	}
	before := capture()
	if b := before[testRangeID]; b.start != "" || b.end != "k5" || b.generation != 2 || b.index != 12 {
		t.Fatalf("parent after split: %+v", b)
	}
	if c := before[8]; c.start != "k5" || c.end != "" || c.generation != 2 || c.index != 1 {
		t.Fatalf("child after split: %+v", c)
	}
	h.restart()
	after := capture()
	for id, b := range before {
		if after[id] != b {
			t.Errorf("range %d after restart:\n%+v\nbefore:\n%+v", id, after[id], b)
		}
	}
	if len(h.splitLog) != 0 {
		t.Errorf("OnSplit called by a restart: %q", h.splitLog)
	}
	// The child's end is unbounded: Bounds returns nil, not "".
	if _, end := h.rangeSM(8).Bounds(); end != nil {
		t.Errorf("child end %q, want nil", end)
	}
}

// TestSplitWithoutOnSplit: a store with no OnSplit applies splits all the
// same; failed splits call nothing and change nothing but the applied index.
func TestSplitWithoutOnSplit(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := s.CreateStateMachine(1, 1).(*RangeSM)
	if _, err := r.Open(nil); err != nil {
		t.Fatal(err)
	}
	update := func(index uint64, cmd []byte) error {
		out, err := r.Update([]sm.Entry{{Index: index, Cmd: cmd}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := DecodeResult(out[0].Result)
		if err != nil {
			t.Fatal(err)
		}
		return ErrorFromResult(res)
	}
	if err := update(1, putCmd(t, 2, "b", "1")); err != nil {
		t.Fatal(err)
	}
	if err := update(2, splitCmd(t, "", 2)); !errors.Is(err, ErrInvalidSplit) {
		t.Fatalf("split at the start: %v", err)
	}
	if start, end := r.Bounds(); len(start) != 0 || end != nil || r.Generation() != 1 {
		t.Fatalf("a failed split changed the bounds: [%q, %q) gen %d", start, end, r.Generation())
	}
	if err := update(3, splitCmd(t, "c", 2)); err != nil {
		t.Fatal(err)
	}
	if _, end := r.Bounds(); string(end) != "c" || r.Generation() != 2 {
		t.Fatalf("parent end %q gen %d", end, r.Generation())
	}
	child := s.CreateStateMachine(2, 1).(*RangeSM)
	if idx, err := child.Open(nil); err != nil || idx != 0 {
		t.Fatalf("child Open: %d %v", idx, err)
	}
	v, err := child.View()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if start, end := v.Bounds(); string(start) != "c" || end != nil || v.Generation() != 2 || v.Revision() != 2 || v.LastCommandRevision() != 2 {
		t.Fatalf("child view: [%q, %q) gen %d rev %d last-cmd-rev %d", start, end, v.Generation(), v.Revision(), v.LastCommandRevision())
	}
}

func TestSubtractBounds(t *testing.T) {
	b := func(start, end string) bounds {
		out := bounds{start: []byte(start)}
		if end != "∞" {
			out.end = []byte(end)
		}
		return out
	}
	for _, tc := range []struct {
		from  bounds
		holes []bounds
		want  string
	}{
		{b("", "∞"), nil, `["", ∞)`},
		{b("", "∞"), []bounds{b("m", "∞")}, `["", "m")`},
		{b("", "∞"), []bounds{b("", "m")}, `["m", ∞)`},
		{b("", "∞"), []bounds{b("d", "m")}, `["", "d") ["m", ∞)`},
		{b("", "∞"), []bounds{b("m", "t"), b("d", "g")}, `["", "d") ["g", "m") ["t", ∞)`},
		{b("d", "m"), []bounds{b("a", "c"), b("n", "∞")}, `["d", "m")`},
		{b("d", "m"), []bounds{b("a", "e"), b("l", "∞")}, `["e", "l")`},
		{b("d", "m"), []bounds{b("a", "∞")}, ``},
		{b("d", "m"), []bounds{b("d", "m")}, ``},
		{b("d", "m"), []bounds{b("m", "z"), b("a", "d")}, `["d", "m")`},
		{b("d", "∞"), []bounds{b("f", "g"), b("f", "h")}, `["d", "f") ["h", ∞)`},
	} {
		var got []string
		for _, p := range subtractBounds(tc.from, tc.holes) {
			got = append(got, strings.TrimSuffix(p.String(), " gen 0"))
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s minus %v = %q, want %q", tc.from, tc.holes, got, tc.want)
		}
	}
}

// TestBoundsEncoding: bounds written before generations decode as
// generation 1; the current encoding round-trips.
func TestBoundsEncoding(t *testing.T) {
	v1 := []byte{boundsEncodingV1, 1, 'b', 1, 'm'}
	got, err := decodeBounds(v1)
	if err != nil || string(got.start) != "b" || string(got.end) != "m" || got.generation != 1 {
		t.Fatalf("version 1: %s %v", got, err)
	}
	for _, b := range []bounds{
		{start: []byte{}, generation: 1},
		{start: []byte("a\x00"), end: []byte("q"), generation: 300},
		{start: []byte("x"), end: []byte("y\x00"), generation: 2},
	} {
		got, err := decodeBounds(b.encode())
		if err != nil || got.String() != b.String() || (got.end == nil) != (b.end == nil) {
			t.Errorf("round trip of %s: %s %v", b, got, err)
		}
	}
	if _, err := decodeBounds([]byte{3, 0, 0}); err == nil {
		t.Error("unknown version accepted")
	}
}

// TestViewBoundsNeverAheadOfBounds: while splits are applied, a View that
// sees a split's new bounds is never followed by Bounds()/Generation()
// reporting older ones. The router relies on this: after a range refuses a
// request with ErrWrongRange, refreshing its cache from Bounds() must route
// by the bounds that refused it.
func TestViewBoundsNeverAheadOfBounds(t *testing.T) {
	h := newHarness(t)
	rsm := h.rangeSM(testRangeID)
	const splits = 200
	done, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := range splits {
			select {
			case <-stop:
				return
			default:
			}
			// Each split cuts the parent lower, so its bounds change every time.
			key := fmt.Sprintf("k%04d", splits-i)
			if err := ErrorFromResult(h.update(splitCmd(t, key, uint64(100+i)))[0]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var bad string
	views := 0
	for running := true; running && bad == ""; views++ {
		select {
		case <-done:
			running = false
		default:
		}
		v, err := rsm.View()
		if err != nil {
			bad = err.Error()
			break
		}
		seen := v.Generation()
		v.Close()
		if now := rsm.Generation(); now < seen {
			bad = fmt.Sprintf("a View saw generation %d, then Generation() said %d", seen, now)
		}
	}
	close(stop)
	<-done
	if bad != "" {
		t.Fatal(bad)
	}
	if g := rsm.Generation(); g != splits+1 {
		t.Fatalf("parent generation %d after %d splits", g, splits)
	}
	t.Logf("%d views during %d splits", views, splits)
}
