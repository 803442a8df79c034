package dispatcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

func getStatus(t *testing.T, h http.Handler) (int, dispatcher.Status) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/outbox/status", nil))
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var st dispatcher.Status
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &st))
	return rec.Code, st
}

func TestStatusHandler(t *testing.T) {
	f := setup(t)
	var broken atomic.Bool
	f.pub.Fail = func(_ string, m *message.Message) error {
		if broken.Load() {
			return errors.New("broker down")
		}
		return nil
	}
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{RetryInitial: time.Hour, RetryMax: time.Hour}))
	require.NoError(t, err)
	h := d.StatusHandler(dispatcher.StatusConfig{MaxLag: 300 * time.Millisecond})

	code, st := getStatus(t, h)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "dispatcher not running", st.Reason)

	require.NoError(t, d.Start(f.ctx))
	f.write(t, store.Message{Topic: "t", Payload: []byte("1")})
	f.waitDelivered(t, 1)
	code, st = getStatus(t, h)
	require.Equal(t, http.StatusOK, code, st.Reason)
	require.True(t, st.Healthy)
	require.Equal(t, "sqlite", st.Store)
	require.EqualValues(t, 1, st.DeliveredLastMinute)
	require.EqualValues(t, 1, st.Published)

	// A message that cannot be published ages past MaxLag: unhealthy, with the reason.
	broken.Store(true)
	f.write(t, store.Message{Topic: "t", Payload: []byte("2")})
	require.Eventually(t, func() bool {
		code, st = getStatus(t, h)
		return code == http.StatusServiceUnavailable
	}, 10*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 1, st.Pending)
	require.Greater(t, st.OldestPendingAgeSeconds, 0.3)
	require.Contains(t, st.Reason, "oldest pending message is")

	// The database out of reach while the dispatcher runs: unhealthy, and the reason is the
	// store's, not a stopped dispatcher's.
	broken.Store(false)
	f.st.DB().Close()
	code, st = getStatus(t, h)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.False(t, st.Healthy)
	require.True(t, st.Running)
	require.Contains(t, st.Reason, "database is closed")
	require.NoError(t, d.Stop(context.Background()))
}
