package console

import (
	"cmp"
	"fmt"
	"slices"
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

// topicRate is what the dispatcher did with one topic's messages over the chart's minutes.
type topicRate struct {
	Topic                                 string
	PublishedHour, FailedHour             int64
	PublishedLastMinute, FailedLastMinute int64
}

// topicRatesOf sums the minutes per topic, the busiest topic first; the last minute is the
// one so far.
func topicRatesOf(minutes []minute) []topicRate {
	byTopic := map[string]*topicRate{}
	for i, m := range minutes {
		for topic, n := range m.topics {
			r := byTopic[topic]
			if r == nil {
				r = &topicRate{Topic: topic}
				byTopic[topic] = r
			}
			r.PublishedHour += n.Published
			r.FailedHour += n.Failed
			if i == len(minutes)-1 {
				r.PublishedLastMinute, r.FailedLastMinute = n.Published, n.Failed
			}
		}
	}
	var rates []topicRate
	for _, r := range byTopic {
		rates = append(rates, *r)
	}
	slices.SortFunc(rates, func(a, b topicRate) int {
		return cmp.Or(cmp.Compare(b.PublishedHour+b.FailedHour, a.PublishedHour+a.FailedHour), cmp.Compare(a.Topic, b.Topic))
	})
	return rates
}
