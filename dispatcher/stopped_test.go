package dispatcher_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

// A dispatcher that is not running says so: Mode, the status handler and, when the context
// given to Start ended it, one line of the log.
func TestModeAndStatusSayWhenTheDispatcherStopped(t *testing.T) {
	f := setup(t)
	var logs syncBuffer
	cfg := fast(dispatcher.Config{})
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d, err := dispatcher.New(f.st, f.pub, cfg)
	require.NoError(t, err)
	h := d.StatusHandler(dispatcher.StatusConfig{})
	requireStopped := func(t *testing.T, reason string) {
		t.Helper()
		require.Equal(t, dispatcher.ModeStopped, d.Mode())
		require.Equal(t, "stopped", d.Mode().String())
		code, st := getStatus(t, h)
		require.Equal(t, http.StatusServiceUnavailable, code)
		require.False(t, st.Healthy)
		require.False(t, st.Running)
		require.Equal(t, "stopped", st.Mode)
		require.Equal(t, reason, st.Reason)
	}

	t.Run("never started", func(t *testing.T) {
		requireStopped(t, "dispatcher not running")
	})

	runCtx, cancel := context.WithCancel(f.ctx)
	t.Run("running", func(t *testing.T) {
		require.NoError(t, d.Start(runCtx))
		require.Equal(t, dispatcher.ModePolling, d.Mode())
		f.write(t, store.Message{Topic: "t", Payload: []byte("1")})
		f.waitDelivered(t, 1)
		code, st := getStatus(t, h)
		require.Equal(t, http.StatusOK, code, st.Reason)
		require.Equal(t, "polling", st.Mode)
		require.True(t, st.Running)
	})

	t.Run("Start's context cancelled", func(t *testing.T) {
		cancel()
		requireStopped(t, "dispatcher not running: the context given to Start ended (context canceled)")
		const line = "dispatcher stopped: the context given to Start ended"
		require.Eventually(t, func() bool { return strings.Contains(logs.String(), line) }, 10*time.Second, time.Millisecond)
		require.Equal(t, 1, strings.Count(logs.String(), line), logs.String())
		require.Contains(t, logs.String(), "level=WARN")
		require.Contains(t, logs.String(), "cause=\"context canceled\"")

		require.NoError(t, d.Stop(f.ctx), "stopped already")
		requireStopped(t, "dispatcher not running")
	})

	t.Run("started again", func(t *testing.T) {
		f.write(t, store.Message{Topic: "t", Payload: []byte("2")})
		require.Eventually(t, func() bool { return d.Start(f.ctx) == nil }, 10*time.Second, time.Millisecond)
		require.Equal(t, dispatcher.ModePolling, d.Mode())
		f.waitDelivered(t, 2)
	})

	t.Run("stopped", func(t *testing.T) {
		require.NoError(t, d.Stop(f.ctx))
		requireStopped(t, "dispatcher not running")
		require.Equal(t, 1, strings.Count(logs.String(), "msg=\"dispatcher stopped\""), logs.String())
		require.Equal(t, 1, strings.Count(logs.String(), "the context given to Start ended"), "a Stop is not taken for the context's end")
	})
}

// The shutdown the README shows: the dispatcher runs on a context that the signal does not
// cancel, and stops gracefully, within a deadline, after the signal's context ends.
func TestSignalContextWithStopKeepsTheStopGraceful(t *testing.T) {
	f := setup(t)
	pub := &blockingPublisher{release: make(chan struct{}), Publisher: f.pub}
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(f.ctx) // signal.NotifyContext's context, in the README
	require.NoError(t, d.Start(context.WithoutCancel(ctx)))
	f.write(t, store.Message{Topic: "t", Payload: []byte("1")})
	require.Eventually(t, func() bool { return pub.inFlight.Load() == 1 }, 10*time.Second, time.Millisecond)

	stop() // the signal
	<-ctx.Done()
	require.Equal(t, dispatcher.ModePolling, d.Mode(), "the signal alone does not stop the dispatcher")
	stopped := make(chan error, 1)
	go func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- d.Stop(stopCtx)
	}()
	close(pub.release) // the in-flight publish finishes
	require.NoError(t, <-stopped)
	require.Equal(t, dispatcher.ModeStopped, d.Mode())
	require.Equal(t, 1, f.count(t, store.Delivered), "the message in flight was delivered and recorded")
}
