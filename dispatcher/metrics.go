package dispatcher

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/outboxgo/outbox/store"
)

// meterName is the instrumentation scope of the dispatcher's metrics.
const meterName = "github.com/outboxgo/outbox/dispatcher"

// instruments are the dispatcher's metrics:
//
//	outbox.messages.published   counter    messages the publisher acknowledged, by topic
//	outbox.publish.failures     counter    failed publish attempts, by topic
//	outbox.messages.parked      counter    messages parked, by topic
//	outbox.lease.overrun        counter    claimed messages recorded after their lease ran out
//	outbox.publish.duration     histogram  seconds per publisher call
//	outbox.delivery.latency     histogram  seconds from a message's write to its acknowledgement
//	outbox.batch.size           histogram  messages per claimed batch
//	outbox.pending              gauge      pending messages in the store
//	outbox.parked               gauge      parked messages in the store
//	outbox.lag                  gauge      seconds since the oldest pending message was written
//	outbox.log.lag              gauge      bytes the log reader's recorded position is behind the log's end
//	outbox.log.delay            gauge      seconds since the moment up to which the log reader delivered all
//
// The log gauges are reported in log mode only. The gauges carry the store's name and the mode ("log", "standby" or "polling"); they read the store once per
// collection, and only for stores that implement store.Operator.
type instruments struct {
	published, failures, parkedN, overrun metric.Int64Counter
	publishDuration, latency              metric.Float64Histogram
	batchSize                             metric.Int64Histogram
	meter                                 metric.Meter
	pending, parked, logLag               metric.Int64ObservableGauge
	lag, logDelay                         metric.Float64ObservableGauge
}

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(meterName)
	in := &instruments{meter: m}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	messages := metric.WithUnit("{message}")
	seconds := []metric.Float64HistogramOption{metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)}
	var err error
	in.published, err = m.Int64Counter("outbox.messages.published", messages, metric.WithDescription("Messages the publisher acknowledged."))
	keep(err)
	in.failures, err = m.Int64Counter("outbox.publish.failures", metric.WithDescription("Failed publish attempts."))
	keep(err)
	in.parkedN, err = m.Int64Counter("outbox.messages.parked", messages, metric.WithDescription("Messages parked after their last attempt or a permanent error."))
	keep(err)
	in.overrun, err = m.Int64Counter("outbox.lease.overrun", messages, metric.WithDescription("Claimed messages recorded after their lease ran out; other dispatchers may have published them too."))
	keep(err)
	in.publishDuration, err = m.Float64Histogram("outbox.publish.duration", append(seconds, metric.WithDescription("Time per publisher call."))...)
	keep(err)
	in.latency, err = m.Float64Histogram("outbox.delivery.latency", append(seconds, metric.WithDescription("Time from a message's write to the publisher's acknowledgement."))...)
	keep(err)
	in.batchSize, err = m.Int64Histogram("outbox.batch.size", metric.WithUnit("{message}"), metric.WithDescription("Messages per claimed batch."),
		metric.WithExplicitBucketBoundaries(1, 10, 50, 100, 250, 500, 1000, 5000))
	keep(err)
	in.pending, err = m.Int64ObservableGauge("outbox.pending", metric.WithUnit("{message}"), metric.WithDescription("Pending messages in the store."))
	keep(err)
	in.parked, err = m.Int64ObservableGauge("outbox.parked", metric.WithUnit("{message}"), metric.WithDescription("Parked messages in the store."))
	keep(err)
	in.lag, err = m.Float64ObservableGauge("outbox.lag", metric.WithUnit("s"), metric.WithDescription("Time since the oldest pending message was written."))
	keep(err)
	in.logLag, err = m.Int64ObservableGauge("outbox.log.lag", metric.WithUnit("By"),
		metric.WithDescription("How far the change log reader's recorded position is behind the end of the log (Postgres WAL, MySQL binlog)."))
	keep(err)
	in.logDelay, err = m.Float64ObservableGauge("outbox.log.delay", metric.WithUnit("s"),
		metric.WithDescription("Time since the moment up to which the change log reader has delivered every message written."))
	keep(err)
	return in, errors.Join(errs...)
}

// observeStore registers the gauges' callback for d's store; the returned function
// unregisters it.
func (in *instruments) observeStore(d *Dispatcher) (func(), error) {
	op, ok := d.st.(store.Operator)
	if !ok {
		return func() {}, nil
	}
	name := d.st.Capabilities().Name
	reg, err := in.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		mode := d.Mode()
		attrs := metric.WithAttributes(attribute.String("store", name), attribute.String("mode", mode.String()))
		if mode == ModeLog {
			if lag := d.logs.lagBytes.Load(); lag >= 0 {
				o.ObserveInt64(in.logLag, lag, attrs)
			}
			if at := d.logs.caughtUp.Load(); at > 0 {
				o.ObserveFloat64(in.logDelay, time.Since(time.Unix(0, at)).Seconds(), attrs)
			}
		}
		s, err := op.Stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(in.pending, s.Pending, attrs)
		o.ObserveInt64(in.parked, s.Parked, attrs)
		lag := 0.0
		if !s.OldestPending.IsZero() {
			lag = time.Since(s.OldestPending).Seconds()
		}
		o.ObserveFloat64(in.lag, lag, attrs)
		return nil
	}, in.pending, in.parked, in.lag, in.logLag, in.logDelay)
	if err != nil {
		return nil, err
	}
	return func() { reg.Unregister() }, nil
}

func topicAttr(topic string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("topic", topic))
}
