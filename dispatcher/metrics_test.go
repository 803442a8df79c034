package dispatcher_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
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
	// The dispatcher's own counters per topic agree with the metrics.
	require.Equal(t, map[string]dispatcher.TopicStats{
		"payments": {Published: 2},
		"orders":   {Published: 1, Failed: 2, Parked: 1},
	}, d.StatsByTopic())

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

// laggingLog is a store whose change log reader reports a lag and then reads nothing.
type laggingLog struct {
	dbtest.Store
	lag int64
}

func (l laggingLog) Capabilities() store.Capabilities {
	c := l.Store.Capabilities()
	c.ChangeLog = true
	return c
}

func (l laggingLog) OpenLog(ctx context.Context, o store.LogOptions) (store.LogStream, error) {
	for range 2 {
		o.Status(store.LogStatus{Reading: true, CaughtUp: time.Now().Add(-3 * time.Second), LagBytes: l.lag})
	}
	return quietLog{}, nil
}

// In log mode the reader's lag shows in the log gauges, and a lag past LogLagWarning is
// logged, once a minute at most.
func TestLogLagMetricsAndWarning(t *testing.T) {
	_, _, st := sharedSQLite(t).prepare(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	var logs syncBuffer
	d := startDispatcher(t, laggingLog{Store: st, lag: 5 << 20}, outboxtest.NewPublisher(), dispatcher.Config{
		MeterProvider: mp, LogLagWarning: 1 << 20, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	waitMode(t, d, dispatcher.ModeLog)

	m := collect(t, reader)
	lag := m["outbox.log.lag"].(metricdata.Gauge[int64]).DataPoints
	require.Len(t, lag, 1)
	require.EqualValues(t, 5<<20, lag[0].Value)
	mode, _ := lag[0].Attributes.Value("mode")
	require.Equal(t, "log", mode.AsString())
	delay := m["outbox.log.delay"].(metricdata.Gauge[float64]).DataPoints
	require.Len(t, delay, 1)
	require.InDelta(t, 3, delay[0].Value, 1, "seconds since the reader last caught up")
	require.EqualValues(t, 5<<20, d.Status(context.Background(), time.Minute).LogLagBytes)
	// The warning follows the status that changed the mode, a moment later; once a minute.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "falling behind") }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, 1, strings.Count(logs.String(), "falling behind"), "%s", logs.String())
}

// syncBuffer is a bytes.Buffer safe for a logger's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A batch whose publishing outlasts its lease is claimed and published by another dispatcher
// too; the slow one says so when it records the batch, in its stats, metrics and log.
// With a store that cannot extend leases ([store.LeaseExtender]), a batch whose publish
// outlasts the lease is counted, logged and measured as an overrun.
func TestABatchRecordedAfterItsLeaseIsCountedAsOverrun(t *testing.T) {
	f := setup(t)
	slow := &blockingPublisher{release: make(chan struct{}), Publisher: f.pub}
	f.write(t, store.Message{Topic: "t", Key: "a", Payload: []byte("1")}, store.Message{Topic: "t", Key: "b", Payload: []byte("2")})
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	var logs syncBuffer
	cfg := fast(dispatcher.Config{Workers: 1, Lease: 200 * time.Millisecond, MeterProvider: mp})
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	// A store that cannot extend leases: the batch's lease runs out while it is published.
	d, err := dispatcher.New(noLeaseExtension{f.st}, slow, cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	t.Cleanup(func() { d.Stop(context.Background()) })
	require.Eventually(t, func() bool { return slow.inFlight.Load() > 0 }, 10*time.Second, time.Millisecond)

	// Once the lease runs out, a second dispatcher takes the batch and publishes it.
	other := f.start(t, f.pub, fast(dispatcher.Config{}))
	f.waitDelivered(t, 2)
	require.NoError(t, other.Stop(f.ctx))
	require.Zero(t, other.Stats().Overrun)

	close(slow.release)
	require.Eventually(t, func() bool { return d.Stats().Overrun == 2 }, 10*time.Second, time.Millisecond)
	require.NoError(t, d.Stop(f.ctx))
	require.Len(t, f.pub.Messages("t"), 4, "both dispatchers published both messages")
	require.Equal(t, map[string]int64{"": 2}, sumByTopic(t, collect(t, reader)["outbox.lease.overrun"]))
	require.Contains(t, logs.String(), "after its lease ran out")
}

// noLeaseExtension is a store whose engine cannot extend leases.
type noLeaseExtension struct{ engine store.Engine }

func (s noLeaseExtension) Engine() store.Engine { return struct{ store.Engine }{s.engine} }

func (s noLeaseExtension) Write(ctx context.Context, db store.Execer, msgs ...store.Message) error {
	return s.engine.Write(ctx, db, msgs...)
}
