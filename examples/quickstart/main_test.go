package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// sarama starts one process-wide metrics goroutine that never ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

func TestQuickstartDeliversEveryPayment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, run(ctx, 300, 0, filepath.Join(t.TempDir(), "payments.db")))
}

func TestQuickstartRejectsBadFlags(t *testing.T) {
	require.ErrorContains(t, run(context.Background(), 0, 10, ""), "-payments must be positive")
	require.ErrorContains(t, run(context.Background(), 10, -1, ""), "-rate must not be negative")
}
