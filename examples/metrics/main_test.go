package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// sarama starts one process-wide metrics goroutine that never ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

// scraped is what the test read from the program's endpoints while they served.
type scraped struct {
	report
	metrics    string
	statusCode int
	status     string
	console    string // the console's parked page
}

func TestMetricsExampleServesWhatTheDispatcherDid(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"report and exit", []string{"-addr", "127.0.0.1:0", "-messages", "200"}},
		{"serve until cancelled", []string{"-addr", "127.0.0.1:0", "-messages", "200", "-serve"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			var (
				out bytes.Buffer
				got *scraped
			)
			err := run(ctx, tt.args, &out, func(r report) {
				got = scrape(t, ctx, r)
				cancel() // ends -serve; without it, run returns on its own
			})
			require.NoError(t, err, out.String())
			require.NotNil(t, got, "run returned without serving:\n%s", out.String())
			_, port, err := net.SplitHostPort(got.Addr)
			require.NoError(t, err)
			require.NotEqual(t, "0", port, "run reports the bound port")
			require.Contains(t, out.String(), "http://"+got.Addr+"/metrics")
			require.Contains(t, out.String(), "outbox_messages_parked_total{")

			delivered := 0
			for topic, n := range got.Written {
				if topic == got.FailingTopic {
					require.Equal(t, 1, n)
					_, ok := sample(got.metrics, "outbox_messages_published_total", "topic", topic)
					require.False(t, ok, "nothing is published to %s", topic)
					continue
				}
				delivered += n
				requireSample(t, got.metrics, float64(n), "outbox_messages_published_total", "topic", topic)
			}
			require.Equal(t, 199, delivered, "every message but the failing one went to a delivered topic")
			requireSample(t, got.metrics, 1, "outbox_messages_parked_total", "topic", got.FailingTopic)
			requireSample(t, got.metrics, maxAttempts, "outbox_publish_failures_total", "topic", got.FailingTopic)
			requireSample(t, got.metrics, 1, "outbox_parked", "store", "sqlite", "mode", "polling")
			requireSample(t, got.metrics, 0, "outbox_pending", "store", "sqlite", "mode", "polling")
			requireSample(t, got.metrics, float64(delivered), "outbox_delivery_latency_seconds_count")
			require.Contains(t, got.metrics, "outbox_delivery_latency_seconds_bucket{")
			require.Contains(t, got.metrics, "# TYPE outbox_delivery_latency_seconds histogram")

			require.Equal(t, http.StatusOK, got.statusCode, got.status)
			require.Contains(t, got.status, `"mode":"polling"`)
			require.Contains(t, got.status, `"parked":1,`)
			require.Contains(t, got.status, `"pending":0,`)
			require.Contains(t, got.status, `"healthy":true`)

			require.Contains(t, got.console, "refuses every message", "the console lists the parked message with its error")
			require.Contains(t, got.console, "Messages 1 to 1")
		})
	}
}

func TestMetricsExampleRejectsBadFlags(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-messages", "1"}, "-messages must be at least 2"},
		{[]string{"-addr", "0.0.0.0:0"}, "not a loopback address"},
		{[]string{"-addr", ":9464"}, "not a loopback address"},
		{[]string{"-addr", "nonsense"}, "-addr nonsense"},
		{[]string{"-timeout", "0s"}, "-timeout must be positive"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		require.ErrorContains(t, run(ctx, tt.args, io.Discard, nil), tt.want, "%q", tt.args)
	}
}

// scrape reads the program's endpoints as Prometheus and a readiness probe would.
func scrape(t *testing.T, ctx context.Context, r report) *scraped {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Addr+path, nil)
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	s := &scraped{report: r}
	code, metrics := get("/metrics")
	require.Equal(t, http.StatusOK, code, metrics)
	s.metrics = metrics
	s.statusCode, s.status = get("/status")
	code, s.console = get("/console/parked?topic=" + r.FailingTopic)
	require.Equal(t, http.StatusOK, code, s.console)
	return s
}

// sample returns the value of the first sample of metric name whose labels include the
// name-value pairs of labels.
func sample(text, name string, labels ...string) (float64, bool) {
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "} ")
		if end < 0 {
			continue
		}
		matches := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(rest[:end], labels[i]+`="`+labels[i+1]+`"`) {
				matches = false
			}
		}
		if !matches {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[end+2:]), 64)
		return v, err == nil
	}
	return 0, false
}

func requireSample(t *testing.T, text string, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := sample(text, name, labels...)
	require.True(t, ok, "no sample %s%v in:\n%s", name, labels, text)
	require.Equal(t, want, got, "%s%v", name, labels)
}
