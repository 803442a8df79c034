package dispatcher

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Defaults for the zero fields of [Config].
const (
	DefaultBatchSize       = 500
	DefaultConcurrency     = 64
	DefaultWorkers         = 2
	DefaultLease           = 3 * time.Second
	DefaultMaxAttempts     = 10
	DefaultRetryInitial    = time.Second
	DefaultRetryMax        = 5 * time.Minute
	DefaultPollInterval    = time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultSweepAfter      = time.Minute
	DefaultLogRetry        = 30 * time.Second
	DefaultLogLagWarning   = 256 << 20
)

// Config configures a [Dispatcher]. The zero value is ready to use.
type Config struct {
	// BatchSize is the most messages claimed at once. Defaults to DefaultBatchSize.
	BatchSize int
	// Concurrency is how many keys are published in parallel within a batch. Defaults to
	// DefaultConcurrency.
	Concurrency int
	// Workers is how many batches can be in flight at once: each worker claims, publishes and
	// marks its own batch, so one's database work overlaps another's publishing. Only one
	// worker polls while the outbox is idle; the others join when a claim comes back full (a
	// backlog). Claims keep each key's messages in order across workers as across
	// dispatchers. More workers pay off only while the batches in flight cover fewer keys than
	// the backlog has: a claim skips the messages of keys held by other batches, and skipping
	// costs a scan. Memory, and the messages a crash may leave to be published again, are
	// bounded by Workers x BatchSize. Defaults to DefaultWorkers.
	Workers int
	// Lease is how long a claim holds its messages unless renewed. If the dispatcher dies,
	// other dispatchers take its messages once the lease runs out. While a batch is published
	// and recorded, the dispatcher extends its lease every third of it, where the store can
	// ([store.LeaseExtender]; the stores of this module can), so a slow broker costs no
	// duplicates; with a store that cannot, a batch that takes longer than the lease may be
	// published twice. Defaults to DefaultLease.
	Lease time.Duration
	// MaxAttempts is how many failed attempts park a message. Defaults to DefaultMaxAttempts.
	MaxAttempts int
	// RetryInitial is the wait after a message's first failed attempt; it doubles with each
	// further attempt, with 50% jitter. Defaults to DefaultRetryInitial.
	RetryInitial time.Duration
	// RetryMax caps the wait between attempts. Defaults to DefaultRetryMax.
	RetryMax time.Duration
	// PollInterval is the longest wait between two claims when the outbox is empty, and
	// between retries after a database error. Defaults to DefaultPollInterval.
	PollInterval time.Duration
	// PollOnly keeps the dispatcher polling even when its store can read the database's
	// change log (see store.LogReader).
	PollOnly bool
	// SweepAfter is, while a dispatcher reads the change log, how old a pending message must
	// be, counted back from the last time the log reader caught up, before the sweep claims
	// it as one the log did not carry. A transaction that commits later than this after
	// writing its message may be published twice. The sweep claims every quarter of it (at
	// most every 15 s), and at the polling pace while messages it must deliver wait for a
	// retry. Defaults to DefaultSweepAfter.
	SweepAfter time.Duration
	// LogRetry is how often a dispatcher that polls because the change log is unavailable
	// tries the log again. Defaults to DefaultLogRetry.
	LogRetry time.Duration
	// LogLagWarning is how many bytes the change log reader may fall behind the end of the log
	// (the WAL a Postgres slot keeps, the binlog not yet read) before the dispatcher logs a
	// warning, at most once a minute. Defaults to DefaultLogLagWarning.
	LogLagWarning int64
	// DeadLetterTopic, when set, receives a copy of every message the dispatcher parks, with
	// the reason in the [publisher.MetadataError] header and its own topic in
	// [publisher.MetadataTopic]. Parked messages stay in the outbox too.
	DeadLetterTopic string
	// Retention is how long delivered messages stay in the outbox, for operators to look at.
	// A running dispatcher purges older ones when it starts and every ten minutes after, in
	// bounded batches, one dispatcher at a time per database. Negative keeps them forever.
	// Defaults to DefaultRetention.
	Retention time.Duration
	// DeleteDelivered deletes each message as soon as the publisher acknowledged it, instead
	// of marking it delivered and purging it after Retention: about half the database work
	// per message, as a hand-written loop does, at the cost of no delivered messages for
	// operators to list or count (status shows 0 delivered in the last minute).
	DeleteDelivered bool
	// ShutdownTimeout bounds the graceful stop of [Dispatcher.Run]. Defaults to
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger receives the dispatcher's logs. Defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the dispatcher's metrics (see the package doc's Metrics section).
	// Defaults to otel.GetMeterProvider(), which discards them until the application installs
	// a provider.
	MeterProvider metric.MeterProvider
	// TracerProvider receives the dispatcher's publish spans: one per message written in a
	// trace (see store.WithTraceContext), a child of the writer's span, whose context goes to
	// the broker in the traceparent header. Defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() (Config, error) {
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"BatchSize", &c.BatchSize, DefaultBatchSize},
		{"Concurrency", &c.Concurrency, DefaultConcurrency},
		{"Workers", &c.Workers, DefaultWorkers},
		{"MaxAttempts", &c.MaxAttempts, DefaultMaxAttempts},
	}
	for _, f := range ints {
		if *f.v < 0 {
			return c, fmt.Errorf("outbox: dispatcher Config.%s is negative (%d)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Lease", &c.Lease, DefaultLease},
		{"RetryInitial", &c.RetryInitial, DefaultRetryInitial},
		{"RetryMax", &c.RetryMax, DefaultRetryMax},
		{"PollInterval", &c.PollInterval, DefaultPollInterval},
		{"ShutdownTimeout", &c.ShutdownTimeout, DefaultShutdownTimeout},
		{"SweepAfter", &c.SweepAfter, DefaultSweepAfter},
		{"LogRetry", &c.LogRetry, DefaultLogRetry},
	}
	if c.LogLagWarning < 0 {
		return c, fmt.Errorf("outbox: dispatcher Config.LogLagWarning is negative (%d)", c.LogLagWarning)
	}
	if c.LogLagWarning == 0 {
		c.LogLagWarning = DefaultLogLagWarning
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	for _, f := range durations {
		if *f.v < 0 {
			return c, fmt.Errorf("outbox: dispatcher Config.%s is negative (%v)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.RetryMax < c.RetryInitial {
		return c, fmt.Errorf("outbox: dispatcher Config.RetryMax (%v) is less than RetryInitial (%v)", c.RetryMax, c.RetryInitial)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}
