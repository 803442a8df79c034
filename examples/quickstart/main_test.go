package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// sarama starts one process-wide metrics goroutine that never ends, and the reader of
// watermill-redisstream's subscriber, which its Close does not wait for, may still sleep
// 500 ms after the read that the close cancelled.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream.(*Subscriber).read"))
}

func TestQuickstartDeliversEveryPayment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, run(ctx, 300, 0, filepath.Join(t.TempDir(), "payments.db"), ""))
}

func TestQuickstartRejectsBadFlags(t *testing.T) {
	require.ErrorContains(t, run(context.Background(), 0, 10, "", ""), "-payments must be positive")
	require.ErrorContains(t, run(context.Background(), 10, -1, "", ""), "-rate must not be negative")
	require.ErrorContains(t, run(context.Background(), 10, 0, "", "mqtt://127.0.0.1:1883"), `unknown scheme "mqtt"`)
	require.ErrorContains(t, run(context.Background(), 10, 0, "", "127.0.0.1:4222"), "want kafka://, nats://, redis:// or amqp://")
}

// -broker against the servers make test starts (.ci/services); a server that cannot be
// reached skips its test, except under CI.
func TestQuickstartOtherBrokers(t *testing.T) {
	for _, b := range []struct{ name, env, url string }{
		{"nats", "OUTBOX_TEST_NATS", "nats://127.0.0.1:4222"},
		{"redis", "OUTBOX_TEST_REDIS", "redis://127.0.0.1:6379/0"},
		{"rabbitmq", "OUTBOX_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/"},
	} {
		t.Run(b.name, func(t *testing.T) {
			url := b.url
			if v := os.Getenv(b.env); v != "" {
				url = v
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			probe, err := openBroker(ctx, url, slog.New(slog.DiscardHandler))
			if err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s is not reachable under CI (make test starts it with .ci/services): %v", b.name, err)
				}
				t.Skipf("%s is not reachable; skipping: %v", b.name, err)
			}
			probe.close()
			require.NoError(t, run(ctx, 300, 0, filepath.Join(t.TempDir(), "payments.db"), url))
		})
	}
}
