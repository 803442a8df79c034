package console

import (
	"context"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

// screenshotEnv names the file the browser test writes a screenshot of the overview to,
// for docs/console.png: OUTBOX_CONSOLE_SCREENSHOT=$PWD/docs/console.png.
const screenshotEnv = "OUTBOX_CONSOLE_SCREENSHOT"

// chromium finds Debian's chromium, installing it when it is missing and the test runs as
// root, as .ci/services does.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() != 0 {
		msg := "chromium is not installed and cannot be installed here (not root): apt-get install chromium, or run .ci/services as root"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "chromium"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("chromium is missing and apt-get %s failed: %v\n%s", args[0], err, out)
		}
	}
	p, err := exec.LookPath("chromium")
	require.NoError(t, err, "apt-get installed chromium, but it is not on PATH")
	return p
}

// browser starts a headless Chromium with a fresh profile. The flags keep it from reaching
// for the network, which is closed on the test machines and would stall it.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancelTimeout)
	require.NoError(t, chromedp.Do(ctx), "start chromium")
	return ctx
}

// xssPayload would run script, or load an image, if a page put it in as markup.
const xssPayload = `<script>window.xssRan=1</script><img src=x onerror="window.xssRan=1">`

// liveOutbox is a Postgres outbox with a running dispatcher, three parked messages in topic
// "orders" and delivered ones in "payments", and the console serving it.
type liveOutbox struct {
	st       dbtest.Store
	pub      *outboxtest.Publisher
	url      string   // the console, mounted under /ops/outbox/
	parked   []string // ids of the parked messages: the script payload, JSON, binary
	payments int
}

func startLiveOutbox(t *testing.T) *liveOutbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	db, schema := dbtest.Postgres(t)
	quiet := slog.New(slog.DiscardHandler)
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox", Logger: quiet}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))

	// The broker refuses topic orders until the test lets it through.
	var refuse atomic.Bool
	refuse.Store(true)
	pub := outboxtest.NewPublisher()
	pub.Fail = func(topic string, _ *message.Message) error {
		if topic == "orders" && refuse.Load() {
			return errors.New(`broker refused topic orders: <b>not authorised</b>`)
		}
		return nil
	}
	d, err := dispatcher.New(st, pub, dispatcher.Config{MaxAttempts: 2, RetryInitial: 10 * time.Millisecond,
		RetryMax: 50 * time.Millisecond, PollInterval: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.WithoutCancel(ctx)))
	t.Cleanup(func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, d.Stop(stopCtx))
	})
	c, err := New(Config{Store: st, Dispatcher: d, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	mux := http.NewServeMux()
	mux.Handle("/ops/outbox/", http.StripPrefix("/ops/outbox", c))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	o := &liveOutbox{st: st, pub: pub, url: srv.URL + "/ops/outbox/", payments: 40}
	orders := []store.Message{
		{ID: store.NewID(), Topic: "orders", Key: "order-1001", Payload: []byte(xssPayload)},
		{ID: store.NewID(), Topic: "orders", Key: "order-1002", Payload: []byte(`{"order":1002,"total":"19.90"}`)},
		{ID: store.NewID(), Topic: "orders", Key: "order-1003", Payload: []byte{0x0a, 0x04, 0xde, 0xad, 0xbe, 0xef, 0x10, 0x01}},
	}
	var msgs []store.Message
	for i := range o.payments {
		msgs = append(msgs, store.Message{Topic: "payments", Key: fmt.Sprintf("customer-%d", i%7), Payload: fmt.Appendf(nil, `{"payment":%d}`, i)})
	}
	require.NoError(t, st.Write(ctx, db, append(msgs, orders...)...))
	for _, m := range orders {
		o.parked = append(o.parked, m.ID)
	}
	// The dispatcher counts what it published once it has marked it, after the publisher
	// has it: the chart shows the count.
	require.Eventually(t, func() bool { return parkedCount(t, st) == 3 && d.Stats().Published == int64(o.payments) },
		time.Minute, 50*time.Millisecond, "the orders were not parked, or the payments not published")
	require.Len(t, pub.Messages("payments"), o.payments)
	refuse.Store(false)
	return o
}

// published reports whether the publisher has been given the message id.
func (o *liveOutbox) published(id string) bool {
	return slices.ContainsFunc(o.pub.Messages("orders"), func(m *message.Message) bool { return m.UUID == id })
}

func text(t *testing.T, ctx context.Context, css string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(css)))
	require.NoError(t, err, "read %s", css)
	return strings.TrimSpace(s)
}

func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	require.NoError(t, err, "evaluate %s", js)
	return v
}

// open loads a console page and waits for an element of it.
func open(t *testing.T, ctx context.Context, url, css string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(css))), "open %s", url)
}

// click clicks an element and waits for an element of the page that follows.
func click(t *testing.T, ctx context.Context, css, next string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(css)), chromedp.WaitVisible(chromedp.CSS(next))), "click %s", css)
}

func TestConsoleInBrowser(t *testing.T) {
	o := startLiveOutbox(t)
	ctx := browser(t)

	t.Run("overview", func(t *testing.T) {
		open(t, ctx, o.url, "#chart")
		require.Equal(t, "3", text(t, ctx, "#parked"))
		require.Contains(t, []string{"log", "polling"}, text(t, ctx, "#mode"))
		require.Equal(t, fmt.Sprint(o.payments), text(t, ctx, "#published-hour"))
		require.Equal(t, "6", text(t, ctx, "#failed-hour"), "two attempts of each parked order")
		require.Contains(t, text(t, ctx, "#topics"), "orders")
		rates := text(t, ctx, "#topic-rates") // per topic: published, failed attempts, ...
		require.Regexp(t, fmt.Sprintf(`payments\s+%d\s+0`, o.payments), rates)
		require.Regexp(t, `orders\s+\d+\s+6`, rates)
		require.Contains(t, text(t, ctx, "#parked-keys"), "order-1001")
		if path := os.Getenv(screenshotEnv); path != "" {
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Clean(path), png, 0o644))
			t.Logf("wrote the overview's screenshot to %s", path)
		}
	})

	t.Run("payloads and errors show as text", func(t *testing.T) {
		open(t, ctx, o.url+"parked", "#parked-list")
		row := `tr[data-id="` + o.parked[0] + `"]`
		require.Equal(t, xssPayload, eval[string](t, ctx, `document.querySelector('`+row+` pre.payload').textContent`))
		require.Contains(t, text(t, ctx, row+" td.err"), "<b>not authorised</b>")
		require.Zero(t, eval[int](t, ctx, `document.querySelectorAll('script, img, b').length`), "markup from a message became part of the page")
		require.Equal(t, "undefined", eval[string](t, ctx, `typeof window.xssRan`))
		// textContent: the preview is in a closed <details>, which innerText leaves out.
		require.Contains(t, eval[string](t, ctx, `document.querySelector('tr[data-id="`+o.parked[2]+`"] pre.payload').textContent`),
			"de ad be ef", "binary payloads show as hex")
	})

	t.Run("actions from another origin are refused", func(t *testing.T) {
		open(t, ctx, o.url+"parked", "#parked-list")
		token := eval[string](t, ctx, `document.querySelector('input[name=csrf]').value`)
		for name, csrf := range map[string]string{"forged token": strings.Repeat("A", 43), "the browser's own token": token} {
			attacker := crossSiteForm(t, o.url+"requeue", csrf)
			open(t, ctx, attacker, "#error")
			require.Contains(t, text(t, ctx, "#error"), "Refused", name)
			require.Equal(t, 3, parkedCount(t, o.st), "%s: a request from another origin requeued messages", name)
		}
	})

	t.Run("requeue one, a key, then all", func(t *testing.T) {
		open(t, ctx, o.url+"parked", "#parked-list")
		click(t, ctx, `tr[data-id="`+o.parked[0]+`"] button.requeue`, "#confirm")
		require.Contains(t, text(t, ctx, "#question"), o.parked[0])
		require.Equal(t, 3, parkedCount(t, o.st), "the confirmation page requeued already")
		click(t, ctx, "#confirm", "#report")
		require.Contains(t, text(t, ctx, "#report"), "Requeued 1 message")
		require.Eventually(t, func() bool { return o.published(o.parked[0]) }, 30*time.Second, 50*time.Millisecond,
			"the requeued message was not published")

		open(t, ctx, o.url+"key?topic=orders&key=order-1002", "#requeue-key")
		click(t, ctx, "#requeue-key", "#confirm")
		click(t, ctx, "#confirm", "#report")
		require.Contains(t, text(t, ctx, "#report"), "Requeued 1 message")

		open(t, ctx, o.url, "#requeue-all")
		click(t, ctx, "#requeue-all", "#confirm")
		click(t, ctx, "#confirm", "#report")
		require.Contains(t, text(t, ctx, "#report"), "Requeued 1 message")
		require.Eventually(t, func() bool { return o.published(o.parked[1]) && o.published(o.parked[2]) }, 30*time.Second, 50*time.Millisecond,
			"the requeued messages were not published")
		open(t, ctx, o.url, "#parked")
		require.Equal(t, "0", text(t, ctx, "#parked"))
	})
}

// crossSiteForm serves, from another origin, a page that posts a requeue of every parked
// message to action as soon as it loads, and returns its address.
func crossSiteForm(t *testing.T, action, csrf string) string {
	t.Helper()
	page := `<!doctype html><form method="post" action="` + html.EscapeString(action) + `">
<input type="hidden" name="scope" value="all"><input type="hidden" name="confirmed" value="yes">
<input type="hidden" name="csrf" value="` + html.EscapeString(csrf) + `"></form>
<script>document.forms[0].submit()</script>`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(page))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
