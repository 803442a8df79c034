package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
)

// announcing is stdout that hands over the first line the program prints.
type announcing struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
	once  sync.Once
}

func (w *announcing) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if line, _, ok := strings.Cut(w.buf.String(), "\n"); ok {
		w.once.Do(func() { w.lines <- line })
	}
	return len(p), nil
}

var servedURL = regexp.MustCompile(`http://\S+/`)

// serveConsole runs `outbox serve` until the test ends and returns the console's address.
func serveConsole(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout := &announcing{lines: make(chan string, 1)}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, &stderr) }()
	t.Cleanup(func() {
		cancel()
		require.Equal(t, exitOK, <-done, "outbox serve did not stop cleanly:\n%s", stderr.String())
	})
	select {
	case line := <-stdout.lines:
		url := servedURL.FindString(line)
		require.NotEmpty(t, url, "no address in %q", line)
		return url
	case code := <-done:
		done <- code // for the cleanup
		t.Fatalf("outbox serve exited with %d before serving:\n%s", code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("outbox serve did not announce its address within 30 s")
	}
	return ""
}

func getPage(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s:\n%s", url, b)
	return string(b)
}

// The console that serve runs shows the outbox, and no page shows the DSN or its password.
func TestServeShowsTheOutboxAndNotTheDSN(t *testing.T) {
	f := postgresFixture(t)
	const password = "s3cret-console-pass"
	// The test server trusts loopback, so it takes any password.
	dsn := strings.Replace(dbtest.PostgresDSN(), "postgres@", "postgres:"+password+"@", 1)
	require.Contains(t, dsn, password, "the test DSN has no user to give a password to")
	table := f.flags[len(f.flags)-1]
	require.Contains(t, f.ok(t, "migrate"), "migrated table")
	ids := f.write(t, store.Message{Topic: "orders", Key: "k1", Payload: []byte("first")},
		store.Message{Topic: "orders", Key: "k2", Payload: []byte("second")})
	f.settle(t, ids[:1], ids[1:], "broker said no")

	for _, readOnly := range []bool{false, true} {
		args := []string{"--dsn", dsn, "--table", table, "serve", "--addr", "127.0.0.1:0"}
		if readOnly {
			args = append(args, "--read-only")
		}
		url := serveConsole(t, args...)
		for _, page := range []string{"", "parked", "key?topic=orders&key=k1", "static/console.css"} {
			body := getPage(t, url+page)
			for _, secret := range []string{password, "postgres://", "sslmode", ":5432"} {
				require.NotContains(t, body, secret, "page %q shows part of the DSN", page)
			}
		}
		parked := getPage(t, url+"parked")
		require.Contains(t, parked, ids[0])
		require.Contains(t, parked, "broker said no")
		require.Equal(t, readOnly, strings.Contains(parked, "read-only"))
		require.Equal(t, !readOnly, strings.Contains(parked, `action="requeue"`))
		require.Contains(t, getPage(t, url), "No dispatcher was given to this console")
	}
}

func TestServeRefusesRemoteAddressesUnlessAllowed(t *testing.T) {
	f := sqliteFixture(t)
	r := f.run(t, "serve", "--addr", "0.0.0.0:0")
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, "not a loopback address")
	require.Contains(t, r.stderr, "--allow-remote")
	r = f.run(t, "serve", "--addr", "nonsense")
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, "host:port")
}
