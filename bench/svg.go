package bench

import (
	"fmt"
	"html"
	"io"
)

// A horizontal grouped bar chart in plain SVG: one group per workload, one
// bar per series, values printed at the bar ends.

type bar struct {
	label string
	value float64
	color int // index into palette
}

type barGroup struct {
	label string
	bars  []bar
}

var palette = []string{"#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#76b7b2", "#b07aa1"}

const (
	svgWidth       = 900
	svgLabelWidth  = 260
	svgBarHeight   = 16
	svgGroupGap    = 12
	svgTopMargin   = 40
	svgRightMargin = 110
)

func writeBarChart(w io.Writer, title, unit string, groups []barGroup) {
	maxValue := 0.0
	nbars := 0
	for _, g := range groups {
		for _, b := range g.bars {
			maxValue = max(maxValue, b.value)
			nbars++
		}
	}
	if maxValue == 0 {
		maxValue = 1
	}
	height := svgTopMargin + nbars*svgBarHeight + len(groups)*svgGroupGap + 20
	plotWidth := float64(svgWidth - svgLabelWidth - svgRightMargin)
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", svgWidth, height)
	fmt.Fprintf(w, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(w, `<text x="10" y="22" font-size="15" font-weight="bold">%s (%s)</text>`+"\n", html.EscapeString(title), html.EscapeString(unit))
	y := svgTopMargin
	for _, g := range groups {
		fmt.Fprintf(w, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+12, html.EscapeString(g.label))
		for _, b := range g.bars {
			width := b.value / maxValue * plotWidth
			fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", svgLabelWidth-6, y+12, html.EscapeString(b.label))
			fmt.Fprintf(w, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", svgLabelWidth, y+2, width, svgBarHeight-4, palette[b.color%len(palette)])
			fmt.Fprintf(w, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(svgLabelWidth)+width+4, y+12, formatValue(b.value))
			y += svgBarHeight
		}
		y += svgGroupGap
	}
	fmt.Fprintln(w, "</svg>")
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
