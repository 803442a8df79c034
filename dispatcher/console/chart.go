package console

import (
	"fmt"
	"time"
)

// Geometry of the publish chart, an SVG drawn on the server: no script, no library.
const (
	chartWidth  = 600
	chartHeight = 100
	barWidth    = chartWidth / historyMinutes
)

type chart struct {
	Width, Height     int
	Bars              []bar
	Max               int64
	Published, Failed int64 // totals over the chart
	Since             time.Time
	Minutes           int
}

// bar is one minute: published messages in one colour, failed attempts in another, from the
// same baseline.
type bar struct {
	X, Width          int
	PubY, PubHeight   int
	FailY, FailHeight int
	Title             string
}

func chartOf(minutes []minute) *chart {
	c := &chart{Width: chartWidth, Height: chartHeight, Minutes: len(minutes)}
	if len(minutes) > 0 {
		c.Since = minutes[0].start
	}
	for _, m := range minutes {
		c.Max = max(c.Max, m.published, m.failed)
		c.Published += m.published
		c.Failed += m.failed
	}
	// Bars fill from the right: the newest minute is at the right edge.
	offset := historyMinutes - len(minutes)
	height := func(n int64) int {
		if c.Max == 0 || n == 0 {
			return 0
		}
		return max(1, int(n*chartHeight/c.Max))
	}
	for i, m := range minutes {
		b := bar{X: (offset + i) * barWidth, Width: barWidth - 2}
		b.PubHeight, b.FailHeight = height(m.published), height(m.failed)
		b.PubY, b.FailY = chartHeight-b.PubHeight, chartHeight-b.FailHeight
		label := m.start.UTC().Format("15:04")
		if i == len(minutes)-1 {
			label += " (this minute so far)"
		}
		b.Title = fmt.Sprintf("%s: %d published, %d failed", label, m.published, m.failed)
		c.Bars = append(c.Bars, b)
	}
	return c
}
