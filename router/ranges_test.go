package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// boundsOnly is a Range with bounds and nothing else, for the cache tests.
type boundsOnly struct {
	id         uint64
	start, end string
}

func (b *boundsOnly) RangeID() uint64   { return b.id }
func (b *boundsOnly) ReplicaID() uint64 { return 1 }
func (b *boundsOnly) Bounds() ([]byte, []byte, bool) {
	if b.end == "" {
		return []byte(b.start), nil, true
	}
	return []byte(b.start), []byte(b.end), true
}
func (b *boundsOnly) Leader() (uint64, uint64, bool) { return 1, 1, true }
func (b *boundsOnly) RecordLoad([]byte)              {}
func (b *boundsOnly) Generation() uint64             { return 1 }
func (b *boundsOnly) Write(context.Context, *tesserapb.Command, bool) (*tesserapb.Result, error) {
	return nil, nil
}
func (b *boundsOnly) Read(context.Context, bool, func(*statemachine.View) (any, error)) (any, error) {
	return nil, nil
}
func (b *boundsOnly) ReadAt(context.Context, int64, func(*statemachine.View) (any, error)) (any, error) {
	return nil, nil
}
func (b *boundsOnly) Fence(context.Context, int64) error { return nil }
func (b *boundsOnly) FenceIndex(context.Context, int64) (uint64, error) {
	return 0, nil
}
func (b *boundsOnly) ReadAfter(context.Context, uint64, int64, func(*statemachine.View) (any, error)) (any, error) {
	return nil, nil
}
func (b *boundsOnly) GrantLease(context.Context, int64, int64) (*tesserapb.Result, error) {
	return nil, nil
}
func (b *boundsOnly) MarkLease(context.Context, int64, time.Duration) (*tesserapb.LeaseRecord, error) {
	return nil, nil
}
func (b *boundsOnly) RevokeLease(context.Context, int64) (*tesserapb.Result, error) {
	return nil, nil
}
func (b *boundsOnly) RenewLease(context.Context, int64) (int64, error)     { return 0, nil }
func (b *boundsOnly) LeaseRemaining(context.Context, int64) (int64, error) { return 0, nil }

func describe(spans []span) string {
	var parts []string
	for _, s := range spans {
		parts = append(parts, fmt.Sprintf("%d[%s,%q)", s.rng.RangeID(), s.key, s.end))
	}
	return strings.Join(parts, " ")
}

func TestRangeCache(t *testing.T) {
	c := NewRangeCache()
	c.Set([]Range{&boundsOnly{2, "", "g"}, &boundsOnly{3, "g", "p"}, &boundsOnly{4, "p", ""}})
	for _, tc := range []struct{ key, end, want string }{
		{"a", "", `2[a,"")`},
		{"g", "", `3[g,"")`},
		{"zzz", "", `4[zzz,"")`},
		{"a", "c", `2[a,"c")`},
		{"a", "h", `2[a,"g") 3[g,"h")`},
		{"h", "\x00", `3[h,"p") 4[p,"\x00")`},
		{"\x00", "\x00", `2[` + "\x00" + `,"g") 3[g,"p") 4[p,"\x00")`},
		{"g", "p", `3[g,"p")`},
		{"f", "q", `2[f,"g") 3[g,"p") 4[p,"q")`},
		{"m", "c", `3[m,"c")`}, // empty interval: the range holding key answers
	} {
		var end []byte
		if tc.end != "" {
			end = []byte(tc.end)
		}
		spans, ok := c.overlapping([]byte(tc.key), end)
		if !ok || describe(spans) != tc.want {
			t.Errorf("overlapping(%q, %q) = %s, %v; want %s", tc.key, tc.end, describe(spans), ok, tc.want)
		}
	}
	// A hole (a range not yet started after a split) is reported.
	c.Set([]Range{&boundsOnly{2, "", "g"}, &boundsOnly{4, "p", ""}})
	if _, ok := c.overlapping([]byte("a"), []byte("z")); ok {
		t.Error("a hole in the keyspace was not reported")
	}
	if r := c.lookup([]byte("h")); r != nil {
		t.Errorf("lookup in a hole found range %d", r.RangeID())
	}
}
