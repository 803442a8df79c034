package console

import (
	"sync"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
)

// historyMinutes is how far back the chart goes.
const historyMinutes = 60

// counts is a reading of the dispatcher's cumulative counters, in all and per topic.
type counts struct {
	published, failed int64
	topics            map[string]dispatcher.TopicStats
}

// minute is what the dispatcher did in one minute.
type minute struct {
	start             time.Time
	published, failed int64
	topics            map[string]dispatcher.TopicStats // Published and Failed of each topic
}

// history keeps the last hour of the dispatcher's counters, one reading a minute, in memory:
// the dispatcher counts only totals since it was made, and the store keeps no history.
type history struct {
	mu      sync.Mutex
	last    counts
	lastAt  time.Time
	minutes []minute // oldest first, at most historyMinutes-1 full minutes
}

func newHistory(now time.Time, c counts) *history {
	return &history{last: c, lastAt: now}
}

// record closes the minute that began at the previous reading.
func (h *history) record(now time.Time, c counts) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.minutes = append(h.minutes, delta(h.lastAt, h.last, c))
	if len(h.minutes) > historyMinutes-1 {
		h.minutes = h.minutes[len(h.minutes)-(historyMinutes-1):]
	}
	h.last, h.lastAt = c, now
}

// snapshot returns the recorded minutes and the current one so far, oldest first.
func (h *history) snapshot(c counts) []minute {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append(append([]minute(nil), h.minutes...), delta(h.lastAt, h.last, c))
}

// delta is what happened between readings a and b. A counter that went down (a new
// dispatcher value) counts from zero rather than below it.
func delta(start time.Time, a, b counts) minute {
	m := minute{start: start, published: since(a.published, b.published), failed: since(a.failed, b.failed)}
	for topic, now := range b.topics {
		was := a.topics[topic]
		d := dispatcher.TopicStats{Published: since(was.Published, now.Published), Failed: since(was.Failed, now.Failed)}
		if d.Published > 0 || d.Failed > 0 {
			if m.topics == nil {
				m.topics = map[string]dispatcher.TopicStats{}
			}
			m.topics[topic] = d
		}
	}
	return m
}

// since is how much a counter grew from a to b.
func since(a, b int64) int64 {
	if b < a {
		return b
	}
	return b - a
}

func countsOf(d *dispatcher.Dispatcher) counts {
	s := d.Stats()
	return counts{published: s.Published, failed: s.Failed, topics: d.StatsByTopic()}
}

// sample records the dispatcher's counters every interval until stop is closed.
func (h *history) sample(d *dispatcher.Dispatcher, interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			h.record(now, countsOf(d))
		}
	}
}
