package statemachine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

func TestAddSpan(t *testing.T) {
	show := func(spans []*tesserapb.KeySpan) string {
		var parts []string
		for _, s := range spans {
			parts = append(parts, fmt.Sprintf("[%s,%s)", s.Start, s.End))
		}
		return strings.Join(parts, " ")
	}
	span := func(start, end string) *tesserapb.KeySpan {
		return &tesserapb.KeySpan{Start: []byte(start), End: []byte(end)}
	}
	var spans []*tesserapb.KeySpan
	for _, step := range []struct {
		add  *tesserapb.KeySpan
		want string
	}{
		{span("m", "p"), "[m,p)"},
		{span("a", "c"), "[a,c) [m,p)"},
		{span("x", ""), "[a,c) [m,p) [x,)"},
		{span("c", "d"), "[a,d) [m,p) [x,)"}, // adjacent: merged
		{span("n", "o"), "[a,d) [m,p) [x,)"}, // inside: no change
		{span("o", "q"), "[a,d) [m,q) [x,)"}, // overlapping: extended
		{span("b", "z"), "[a,)"},             // reaches the open end
		{span("", "a"), "[,)"},               // the whole keyspace
		{span("k", "l"), "[,)"},              // inside the whole keyspace
	} {
		spans = addSpan(spans, step.add)
		if got := show(spans); got != step.want {
			t.Fatalf("after adding [%s,%s): %s, want %s", step.add.Start, step.add.End, got, step.want)
		}
	}
}
