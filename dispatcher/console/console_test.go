package console

import (
	"context"
	"database/sql"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

// park writes msgs and parks them, as a dispatcher does after their last attempt.
func park(t *testing.T, st dbtest.Store, db store.Execer, lastError string, msgs ...store.Message) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, st.Write(ctx, db, msgs...))
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: len(msgs), Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, res.Messages, len(msgs))
	var failures []store.Failure
	for _, m := range res.Messages {
		failures = append(failures, store.Failure{ID: m.ID, Error: lastError, Park: true})
	}
	require.NoError(t, st.Fail(ctx, &store.FailParams{Token: res.Token, Failures: failures}))
}

func sqliteStore(t *testing.T) (dbtest.Store, *sql.DB) {
	t.Helper()
	db := dbtest.SQLite(t)
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st, db
}

// client is a browser's share of the conversation: a cookie jar, and requests that say
// they come from the console's own origin, as a browser's do.
type client struct {
	t    *testing.T
	base string
	http *http.Client
}

func serve(t *testing.T, cfg Config) *client {
	t.Helper()
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	mux := http.NewServeMux()
	mux.Handle("/ops/outbox/", http.StripPrefix("/ops/outbox", c))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &client{t: t, base: srv.URL + "/ops/outbox/", http: &http.Client{Jar: jar}}
}

func (c *client) get(path string) (int, string) {
	c.t.Helper()
	res, err := c.http.Get(c.base + path)
	require.NoError(c.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(c.t, err)
	return res.StatusCode, string(b)
}

func (c *client) post(path string, form url.Values, header http.Header) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	require.NoError(c.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := c.http.Do(req)
	require.NoError(c.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(c.t, err)
	return res.StatusCode, string(b)
}

var tokenInPage = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// token loads the overview and returns the token its forms carry.
func (c *client) token() string {
	c.t.Helper()
	code, body := c.get("")
	require.Equal(c.t, http.StatusOK, code, body)
	m := tokenInPage.FindStringSubmatch(body)
	require.NotNil(c.t, m, "no token in the page:\n%s", body)
	return m[1]
}

func parkedCount(t *testing.T, st dbtest.Store) int {
	t.Helper()
	res, err := st.List(context.Background(), &store.ListParams{State: store.Parked, Limit: 1000})
	require.NoError(t, err)
	return len(res.Messages)
}

func TestNewNamesTheFieldThatIsWrong(t *testing.T) {
	st, _ := sqliteStore(t)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no store", Config{}, "Config.Store"},
		{"negative page size", Config{Store: st, PageSize: -1}, "Config.PageSize"},
		{"negative max listed", Config{Store: st, MaxListed: -1}, "Config.MaxListed"},
		{"max listed below a page", Config{Store: st, PageSize: 50, MaxListed: 10}, "Config.MaxListed"},
		{"negative timeout", Config{Store: st, QueryTimeout: -time.Second}, "Config.QueryTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestPagesEscapeWhatMessagesHold(t *testing.T) {
	st, db := sqliteStore(t)
	evil := `<script>alert("x")</script>`
	park(t, st, db, "broker said "+evil, store.Message{Topic: "t" + evil, Key: "k" + evil, Payload: []byte(evil)})
	c := serve(t, Config{Store: st})
	for _, path := range []string{"", "parked", "key?key=" + url.QueryEscape("k"+evil)} {
		code, body := c.get(path)
		require.Equal(t, http.StatusOK, code, body)
		require.NotContains(t, body, "<script", path)
		require.Contains(t, body, "&lt;script&gt;", path)
	}
}

func TestActionsNeedTheTokenAndConfirmation(t *testing.T) {
	st, db := sqliteStore(t)
	park(t, st, db, "failed", store.Message{Topic: "orders", Key: "a"}, store.Message{Topic: "orders", Key: "b"}, store.Message{Topic: "payments", Key: "c"})
	c := serve(t, Config{Store: st})
	token := c.token()
	requeueAll := url.Values{"scope": {"all"}, "confirmed": {"yes"}}

	code, body := c.post("requeue", requeueAll, nil)
	require.Equal(t, http.StatusForbidden, code, "no token in the form")
	require.Contains(t, body, "token")
	withWrong := url.Values{"scope": {"all"}, "confirmed": {"yes"}, "csrf": {strings.Repeat("A", 43)}}
	code, _ = c.post("requeue", withWrong, nil)
	require.Equal(t, http.StatusForbidden, code, "a token that is not the browser's")
	withToken := url.Values{"scope": {"all"}, "confirmed": {"yes"}, "csrf": {token}}
	code, _ = c.post("requeue", withToken, http.Header{"Sec-Fetch-Site": {"cross-site"}})
	require.Equal(t, http.StatusForbidden, code, "a browser's request from another site")
	require.Equal(t, 3, parkedCount(t, st), "a refused request changed something")

	unconfirmed := url.Values{"scope": {"all"}, "csrf": {token}}
	code, body = c.post("requeue", unconfirmed, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Requeue every parked message?")
	require.Equal(t, 3, parkedCount(t, st), "the question changed something")
	oversized := url.Values{"scope": {"all"}, "confirmed": {"yes"}, "csrf": {token}, "pad": {strings.Repeat("x", maxFormBytes)}}
	code, _ = c.post("requeue", oversized, nil)
	require.Equal(t, http.StatusForbidden, code, "a form larger than maxFormBytes is not read")
	require.Equal(t, 3, parkedCount(t, st), "an oversized form changed something")

	code, body = c.post("requeue", url.Values{"scope": {"topic"}, "topic": {"payments"}, "confirmed": {"yes"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `Requeued 1 message (topic &#34;payments&#34;)`)
	code, body = c.post("requeue", withToken, http.Header{"Sec-Fetch-Site": {"same-origin"}})
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Requeued 2 messages (all parked)")
	require.Equal(t, 0, parkedCount(t, st))
	code, body = c.post("requeue", url.Values{"scope": {"id"}, "id": {"no-such-id"}, "confirmed": {"yes"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Requeued 0 messages: none parked matched")
	code, _ = c.post("requeue", url.Values{"scope": {"key"}, "confirmed": {"yes"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusBadRequest, code, "a key scope without a key")
}

func TestReadOnlyHidesAndRefusesActions(t *testing.T) {
	st, db := sqliteStore(t)
	park(t, st, db, "failed", store.Message{Topic: "orders", Key: "a"})
	c := serve(t, Config{Store: st, ReadOnly: true})
	for _, path := range []string{"", "parked", "key?topic=orders&key=a"} {
		code, body := c.get(path)
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, body, "read-only")
		require.NotContains(t, body, `method="post"`, path)
	}
	code, body := c.post("requeue", url.Values{"scope": {"all"}, "confirmed": {"yes"}}, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body, "read-only")
	require.Equal(t, 1, parkedCount(t, st))
}

func TestParkedPagesAndFilters(t *testing.T) {
	st, db := sqliteStore(t)
	var msgs []store.Message
	for i := range 7 {
		msgs = append(msgs, store.Message{Topic: "orders", Key: "k" + string(rune('a'+i)), Payload: []byte{0, 1, 2, byte(i)}})
	}
	park(t, st, db, "failed", msgs...)
	park(t, st, db, "failed", store.Message{Topic: "payments", Key: "p", Payload: []byte(`{"amount":5}`)})
	c := serve(t, Config{Store: st, PageSize: 3, MaxListed: 6})

	_, body := c.get("parked")
	require.Contains(t, body, "Messages 1 to 3")
	require.Contains(t, body, `id="next"`)
	require.Contains(t, body, "hex")
	_, body = c.get("parked?page=2")
	require.Contains(t, body, "Messages 4 to 6")
	require.Contains(t, body, "More match than the console pages through (6)")
	require.NotContains(t, body, `id="next"`)
	_, body = c.get("parked?topic=payments")
	require.Contains(t, body, "{&#34;amount&#34;:5}")
	require.Contains(t, body, "Messages 1 to 1")
	_, body = c.get("parked?topic=orders&key=kc")
	require.Equal(t, 1, strings.Count(body, "<tr data-id="))
}

func TestMountedWithoutTrailingSlashRedirects(t *testing.T) {
	st, _ := sqliteStore(t)
	c := serve(t, Config{Store: st})
	res, err := c.http.Get(strings.TrimSuffix(c.base, "/"))
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "/ops/outbox/", res.Request.URL.Path)
}

func TestPreviewIsBounded(t *testing.T) {
	long := strings.Repeat("é", previewTextBytes) // two bytes each
	p := previewOf([]byte(long))
	require.False(t, p.Hex)
	require.True(t, p.Truncated)
	require.LessOrEqual(t, len(p.Text), previewTextBytes)
	require.True(t, strings.HasSuffix(p.Text, "é"), "a character was split")

	bin := make([]byte, 4096)
	p = previewOf(bin)
	require.True(t, p.Hex)
	require.True(t, p.Truncated)
	require.Equal(t, previewHexBytes/16, strings.Count(p.Text, "\n")-0, "one hex line per 16 bytes")
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute} {
		got, err := parseAge(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "0s", "-1h", "xd", "7days", "d"} {
		_, err := parseAge(bad)
		require.Error(t, err, bad)
	}
}

func TestHistoryKeepsAnHourOfMinutes(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := newHistory(start, counts{published: 100, failed: 1})
	for i := 1; i <= 70; i++ {
		h.record(start.Add(time.Duration(i)*time.Minute), counts{published: 100 + int64(i)*10, failed: 1 + int64(i)})
	}
	minutes := h.snapshot(counts{published: 100 + 70*10 + 3, failed: 71})
	require.Len(t, minutes, historyMinutes)
	require.Equal(t, int64(10), minutes[0].published)
	require.Equal(t, int64(1), minutes[0].failed)
	require.Equal(t, start.Add(11*time.Minute), minutes[0].start)
	last := minutes[len(minutes)-1]
	require.Equal(t, int64(3), last.published, "the minute so far")
	require.Equal(t, int64(0), last.failed)

	ch := chartOf(minutes)
	require.Len(t, ch.Bars, historyMinutes)
	require.Equal(t, int64(59*10+3), ch.Published)
	require.Equal(t, chartHeight, ch.Bars[0].PubHeight, "the highest minute fills the chart")
}

func TestHistoryCountsEachTopic(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reading := func(orders, ordersFailed, payments int64) counts {
		return counts{published: orders + payments, failed: ordersFailed, topics: map[string]dispatcher.TopicStats{
			"orders": {Published: orders, Failed: ordersFailed}, "payments": {Published: payments}}}
	}
	h := newHistory(start, reading(5, 0, 0))
	h.record(start.Add(time.Minute), reading(15, 2, 0))
	h.record(start.Add(2*time.Minute), reading(20, 2, 30))
	rates := topicRatesOf(h.snapshot(reading(21, 3, 30)))
	require.Equal(t, []topicRate{
		{Topic: "payments", PublishedHour: 30},
		{Topic: "orders", PublishedHour: 16, FailedHour: 3, PublishedLastMinute: 1, FailedLastMinute: 1},
	}, rates)
}

func TestPurgeDeletesOnlyOldDeliveredMessages(t *testing.T) {
	st, db := sqliteStore(t)
	ctx := context.Background()
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "a"}, store.Message{Topic: "orders", Key: "b"}))
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: 2, Lease: time.Minute})
	require.NoError(t, err)
	require.NoError(t, st.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: []string{res.Messages[0].ID, res.Messages[1].ID}}))
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "c"}))
	c := serve(t, Config{Store: st})
	token := c.token()

	code, body := c.post("purge", url.Values{"older_than": {"7d"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Delete the messages delivered more than 7d ago?")
	code, body = c.post("purge", url.Values{"older_than": {"7d"}, "csrf": {token}, "confirmed": {"yes"}}, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Deleted 0 delivered messages older than 7d.")
	code, body = c.post("purge", url.Values{"older_than": {"1ms"}, "csrf": {token}, "confirmed": {"yes"}}, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "Deleted 2 delivered messages older than 1ms.")
	left, err := st.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, left.Messages, 1)
	require.Equal(t, store.Pending, left.Messages[0].State)

	code, body = c.post("purge", url.Values{"older_than": {"soon"}, "csrf": {token}, "confirmed": {"yes"}}, nil)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, body, "is not an age such as 7d")
}

func TestKeyPageShowsPendingInOrderAndWhatHoldsThem(t *testing.T) {
	st, db := sqliteStore(t)
	ctx := context.Background()
	var msgs []store.Message
	for _, p := range []string{"first", "second", "third"} {
		msgs = append(msgs, store.Message{ID: store.NewID(), Topic: "orders", Key: "order-7", Payload: []byte(p)})
	}
	require.NoError(t, st.Write(ctx, db, msgs...))
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, msgs[0].ID, res.Messages[0].ID)
	require.NoError(t, st.Fail(ctx, &store.FailParams{Token: res.Token,
		Failures: []store.Failure{{ID: msgs[0].ID, Error: "broker unreachable", RetryAfter: time.Hour}}}))
	c := serve(t, Config{Store: st})

	code, body := c.get("key?topic=orders&key=order-7")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `id="held"`)
	require.Contains(t, body, "broker unreachable")
	at := []int{strings.Index(body, msgs[0].ID), strings.Index(body, msgs[1].ID), strings.Index(body, msgs[2].ID)}
	require.True(t, at[0] > 0 && at[0] < at[1] && at[1] < at[2], "not in write order: %v", at)
	_, body = c.get("key")
	require.NotContains(t, body, "pending-list", "no key asked for, nothing listed")
}
