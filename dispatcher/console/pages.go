package console

import (
	"cmp"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

// topicSample is how many parked messages the overview counts by topic: the store counts
// only by state, and counting by topic over a large table would be a full scan.
const topicSample = 100

type overviewData struct {
	Store         string
	HasDispatcher bool
	Mode          string
	Running       bool
	Reason        string
	LogLag        string
	Stats         *store.Stats
	OldestAge     string
	Chart         *chart
	TopicRates    []topicRate
	Topics        []topicCount
	TopicsPartial bool
}

type topicCount struct {
	Topic  string
	Parked int
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	stats, err := c.op.Stats(ctx)
	if err != nil {
		c.storeFailed(w, r, "read the outbox's counts", err)
		return
	}
	data := overviewData{Store: c.st.Capabilities().Name, Stats: stats, OldestAge: "-", LogLag: "-"}
	if !stats.OldestPending.IsZero() {
		data.OldestAge = age(time.Since(stats.OldestPending))
	}
	if d := c.cfg.Dispatcher; d != nil {
		mode := d.Mode()
		data.HasDispatcher, data.Mode, data.Running = true, mode.String(), mode != dispatcher.ModeStopped
		if mode == dispatcher.ModeLog {
			// Only the status knows the log lag. It counts the store again; the status
			// handler does the same on every probe.
			data.LogLag = bytesSize(d.Status(ctx, dispatcher.DefaultMaxLag).LogLagBytes)
		}
		if !data.Running {
			data.Reason = "The dispatcher is not running: it was not started, was stopped, or the context given to Start ended."
		}
		minutes := c.hist.snapshot(countsOf(d))
		data.Chart, data.TopicRates = chartOf(minutes), topicRatesOf(minutes)
	}
	parked, err := c.st.List(ctx, &store.ListParams{State: store.Parked, Limit: topicSample + 1})
	if err != nil {
		c.storeFailed(w, r, "list parked messages", err)
		return
	}
	msgs := parked.Messages
	if len(msgs) > topicSample {
		msgs, data.TopicsPartial = msgs[:topicSample], true
	}
	byTopic := map[string]int{}
	for _, m := range msgs {
		byTopic[m.Topic]++
	}
	for _, t := range slices.Sorted(maps.Keys(byTopic)) {
		data.Topics = append(data.Topics, topicCount{t, byTopic[t]})
	}
	slices.SortStableFunc(data.Topics, func(a, b topicCount) int { return cmp.Compare(b.Parked, a.Parked) })
	c.render(w, r, http.StatusOK, "overview", "Overview", data)
}

type messageRow struct {
	store.StoredMessage
	Preview preview
}

func rowsOf(msgs []store.StoredMessage) []messageRow {
	rows := make([]messageRow, len(msgs))
	for i, m := range msgs {
		rows[i] = messageRow{m, previewOf(m.Payload)}
	}
	return rows
}

type parkedData struct {
	Topic, Key string
	Page       int
	Messages   []messageRow
	First      int
	Last       int
	Prev, Next string // links to the neighbouring pages, empty at the ends
	Beyond     bool   // more match than MaxListed lets the console page through
	MaxListed  int
}

func (c *Console) parked(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := parkedData{Topic: q.Get("topic"), Key: q.Get("key"), Page: 1, MaxListed: c.cfg.MaxListed}
	if p, err := strconv.Atoi(q.Get("page")); err == nil && p > 1 {
		data.Page = p
	}
	size := c.cfg.PageSize
	lastPage := c.cfg.MaxListed / size
	if data.Page > lastPage {
		data.Page = lastPage
	}
	// The store lists from the oldest: a page is the tail of the first page*size messages,
	// and one more tells whether there is a next page.
	res, err := c.st.List(r.Context(), &store.ListParams{State: store.Parked, Topic: data.Topic, Key: data.Key, Limit: data.Page*size + 1})
	if err != nil {
		c.storeFailed(w, r, "list parked messages", err)
		return
	}
	msgs := res.Messages
	from := min((data.Page-1)*size, len(msgs))
	to := min(data.Page*size, len(msgs))
	data.Messages, data.First, data.Last = rowsOf(msgs[from:to]), from+1, to
	link := func(page int) string {
		v := url.Values{}
		if data.Topic != "" {
			v.Set("topic", data.Topic)
		}
		if data.Key != "" {
			v.Set("key", data.Key)
		}
		v.Set("page", strconv.Itoa(page))
		return "parked?" + v.Encode()
	}
	if data.Page > 1 {
		data.Prev = link(data.Page - 1)
	}
	if len(msgs) > to {
		if data.Page < lastPage {
			data.Next = link(data.Page + 1)
		} else {
			data.Beyond = true
		}
	}
	c.render(w, r, http.StatusOK, "parked", "Parked messages", data)
}

type keyData struct {
	Topic, Key     string
	Pending        []messageRow
	PendingMore    bool
	Parked         []messageRow
	ParkedMore     bool
	HeldUntil      time.Time // when the first pending message, which failed, is tried again
	FirstHasFailed bool
}

func (c *Console) key(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := keyData{Topic: q.Get("topic"), Key: q.Get("key")}
	if data.Key == "" {
		c.render(w, r, http.StatusOK, "key", "Messages of a key", data)
		return
	}
	size := c.cfg.PageSize
	list := func(state store.State) ([]messageRow, bool, error) {
		res, err := c.st.List(r.Context(), &store.ListParams{State: state, Topic: data.Topic, Key: data.Key, Limit: size + 1})
		if err != nil {
			return nil, false, err
		}
		msgs := res.Messages
		return rowsOf(msgs[:min(len(msgs), size)]), len(msgs) > size, nil
	}
	var err error
	if data.Pending, data.PendingMore, err = list(store.Pending); err == nil {
		data.Parked, data.ParkedMore, err = list(store.Parked)
	}
	if err != nil {
		c.storeFailed(w, r, "list the messages of a key", err)
		return
	}
	if len(data.Pending) > 0 && data.Pending[0].Attempts > 0 {
		data.FirstHasFailed, data.HeldUntil = true, data.Pending[0].NextAttemptAt
	}
	c.render(w, r, http.StatusOK, "key", "Messages of a key", data)
}
