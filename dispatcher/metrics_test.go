package dispatcher_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func sumByTopic(t *testing.T, a metricdata.Aggregation) map[string]int64 {
	t.Helper()
	s, ok := a.(metricdata.Sum[int64])
	require.True(t, ok, "%T", a)
	out := map[string]int64{}
	for _, dp := range s.DataPoints {
		topic, _ := dp.Attributes.Value(attribute.Key("topic"))
		out[topic.AsString()] += dp.Value
	}
	return out
}

func TestMetrics(t *testing.T) {
	f := setup(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	f.write(t,
		store.Message{Topic: "payments", Key: "a", Payload: []byte("ok")},
		store.Message{Topic: "payments", Key: "b", Payload: []byte("ok")},
		store.Message{Topic: "orders", Key: "c", Payload: []byte("poison")},
		store.Message{Topic: "orders", Key: "d", Payload: []byte("ok")},
	)
	var down atomic.Bool
	f.pub.Fail = func(_ string, m *message.Message) error {
		if string(m.Payload) == "poison" || down.Load() {
			return errors.New("refused")
		}
		return nil
	}
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{MaxAttempts: 2, MeterProvider: mp}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	defer d.Stop(context.Background())
	// Counters move when a batch settles; the store, when its outcome is recorded.
	require.Eventually(t, func() bool { return f.count(t, store.Parked) == 1 && f.count(t, store.Delivered) == 3 }, 10*time.Second, 5*time.Millisecond)

	m := collect(t, reader)
	require.Equal(t, map[string]int64{"payments": 2, "orders": 1}, sumByTopic(t, m["outbox.messages.published"]))
	require.Equal(t, map[string]int64{"orders": 2}, sumByTopic(t, m["outbox.publish.failures"]))
	require.Equal(t, map[string]int64{"orders": 1}, sumByTopic(t, m["outbox.messages.parked"]))

	latency := m["outbox.delivery.latency"].(metricdata.Histogram[float64])
	require.EqualValues(t, 3, latency.DataPoints[0].Count)
	require.Positive(t, latency.DataPoints[0].Sum)
	require.Positive(t, m["outbox.publish.duration"].(metricdata.Histogram[float64]).DataPoints[0].Count)
	require.Positive(t, m["outbox.batch.size"].(metricdata.Histogram[int64]).DataPoints[0].Count)

	// Gauges read the store: one parked message, none pending.
	parked := m["outbox.parked"].(metricdata.Gauge[int64]).DataPoints[0]
	require.EqualValues(t, 1, parked.Value)
	mode, _ := parked.Attributes.Value("mode")
	require.Equal(t, "polling", mode.AsString())
	require.EqualValues(t, 0, m["outbox.pending"].(metricdata.Gauge[int64]).DataPoints[0].Value)

	// A message that waits for its retry shows as lag.
	require.NoError(t, d.Stop(context.Background()))
	d, err = dispatcher.New(f.st, f.pub, dispatcher.Config{RetryInitial: time.Hour, RetryMax: time.Hour, MeterProvider: mp, Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	down.Store(true)
	f.write(t, store.Message{Topic: "payments", Key: "late", Payload: []byte("x")})
	require.Eventually(t, func() bool {
		g, ok := collect(t, reader)["outbox.lag"].(metricdata.Gauge[float64])
		return ok && len(g.DataPoints) > 0 && g.DataPoints[0].Value > 0.05
	}, 10*time.Second, 10*time.Millisecond)
}
