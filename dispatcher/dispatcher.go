package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxgo/outbox/store"
)

const (
	// minPoll is the first idle wait after work or a wake-up; it doubles up to PollInterval.
	minPoll = 5 * time.Millisecond
	// recordTimeout bounds the database calls that record a batch's outcome. They run even
	// when the dispatcher is being stopped, so that acknowledged messages are not sent again.
	recordTimeout = 10 * time.Second
)

// Dispatcher delivers the messages of one outbox store through one publisher.
type Dispatcher struct {
	st      store.Engine
	pub     message.Publisher
	cfg     Config
	log     *slog.Logger
	metrics *instruments
	tracer  trace.Tracer

	mu  sync.Mutex
	run *run

	published, failed, parked, overrun atomic.Int64
	topics                             sync.Map // topic → *topicCounters
	logs                               logState
}

// run is one Start..Stop lifetime.
type run struct {
	ctx      context.Context // Start's context: the run ends when it does
	stop     chan struct{}   // closed: claim no more
	stopOnce sync.Once
	cancel   context.CancelFunc // abandons in-flight work
	done     chan struct{}      // closed when every worker has returned
	more     chan struct{}      // a worker claimed a full batch: a resting one may join
}

// ended reports whether the run is over or ending: stopped, or its context done.
func (r *run) ended() bool { return closed(r.stop) || r.ctx.Err() != nil }

// Stats counts what a dispatcher did since it was created.
type Stats struct {
	// Published is the number of messages the publisher acknowledged.
	Published int64
	// Failed is the number of failed publish attempts.
	Failed int64
	// Parked is the number of messages parked after their last attempt.
	Parked int64
	// Overrun is the number of claimed messages whose outcome was recorded after their
	// lease had run out: another dispatcher may have claimed and published them too. A
	// growing count asks for a longer [Config.Lease] or smaller batches.
	Overrun int64
}

// New returns a dispatcher that delivers the messages of the outbox through pub: a store
// package's Store (pgstore, mysqlstore, sqlitestore), whose engine it drives, or an engine
// itself ([store.EngineOf]).
func New(outbox store.Outbox, pub message.Publisher, cfg Config) (*Dispatcher, error) {
	// A nil pointer in an interface is not == nil: the *T of a constructor whose error was
	// ignored (pub, _ := kafkapub.New(...)) would get through and fail every publish.
	refuseNil := func(what string, v any) error {
		if v == nil {
			return fmt.Errorf("outbox: dispatcher.New: %s is nil", what)
		}
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
			return fmt.Errorf("outbox: dispatcher.New: %s is nil: a nil %T (was its constructor's error checked?)", what, v)
		}
		return nil
	}
	if err := refuseNil("store", outbox); err != nil {
		return nil, err
	}
	st := store.EngineOf(outbox)
	if err := refuseNil("store's engine", st); err != nil {
		return nil, err
	}
	if err := refuseNil("publisher", pub); err != nil {
		return nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	metrics, err := newInstruments(cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("outbox: dispatcher metrics: %w", err)
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &Dispatcher{st: st, pub: pub, cfg: cfg, metrics: metrics, tracer: tp.Tracer(tracerName),
		log: cfg.Logger.With(slog.String("component", "outbox.dispatcher"))}, nil
}

// TopicStats counts what a dispatcher did with the messages of one topic since it was
// created.
type TopicStats struct {
	Published, Failed, Parked int64
}

type topicCounters struct{ Published, Failed, Parked atomic.Int64 }

// topic returns the counters of a topic. Topics are few; their counters stay for the
// dispatcher's life.
func (d *Dispatcher) topic(name string) *topicCounters {
	if c, ok := d.topics.Load(name); ok {
		return c.(*topicCounters)
	}
	c, _ := d.topics.LoadOrStore(name, &topicCounters{})
	return c.(*topicCounters)
}

// StatsByTopic returns the dispatcher's counters per topic, for the topics it has published,
// failed or parked messages of.
func (d *Dispatcher) StatsByTopic() map[string]TopicStats {
	out := map[string]TopicStats{}
	d.topics.Range(func(k, v any) bool {
		c := v.(*topicCounters)
		out[k.(string)] = TopicStats{Published: c.Published.Load(), Failed: c.Failed.Load(), Parked: c.Parked.Load()}
		return true
	})
	return out
}

// Stats returns the dispatcher's counters.
func (d *Dispatcher) Stats() Stats {
	return Stats{Published: d.published.Load(), Failed: d.failed.Load(), Parked: d.parked.Load(), Overrun: d.overrun.Load()}
}

// Start checks the store and starts dispatching in the background. It returns nil at once if
// the dispatcher is already running, and an error if a Stop that ran out of time, or the end
// of the previous Start's context, left it waiting for the publisher.
//
// ctx bounds the whole run, not only the start: cancelling it later stops the dispatcher
// abruptly, as an expired [Dispatcher.Stop] would (in-flight publishes are abandoned), and
// the dispatcher logs that it stopped and why; [Dispatcher.Mode] then reports [ModeStopped]
// until Start is called again. To stop on a signal gracefully, start with a context that the
// signal does not cancel (context.WithoutCancel) and call Stop with a deadline when it
// comes, or use [Dispatcher.Run], which does both.
func (d *Dispatcher) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := d.run; r != nil && !closed(r.done) {
		if r.ended() {
			return errors.New("outbox: dispatcher is still stopping: its in-flight publishes have not returned")
		}
		return nil
	}
	if err := d.st.Check(ctx); err != nil {
		return fmt.Errorf("outbox: dispatcher cannot start: %w", err)
	}
	unobserve, err := d.metrics.observeStore(d)
	if err != nil {
		return fmt.Errorf("outbox: dispatcher metrics: %w", err)
	}
	startCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	r := &run{ctx: startCtx, stop: make(chan struct{}), cancel: cancel, done: make(chan struct{}), more: make(chan struct{}, d.cfg.Workers)}
	d.run = r
	var workers sync.WaitGroup
	lr := d.logReader()
	if lr != nil {
		// Before the workers start: until the reader reports, their claims would race it.
		d.logs.mode.Store(int32(ModeStandby))
	}
	for i := range d.cfg.Workers {
		workers.Go(func() { d.loop(ctx, r, i == 0) })
	}
	if lr != nil {
		workers.Go(func() { d.readLog(ctx, r, lr) })
	}
	if op, ok := d.st.(store.Operator); ok && d.cfg.Retention > 0 {
		workers.Go(func() { d.purge(ctx, r, op) })
	}
	go func() {
		workers.Wait()
		d.logs.mode.Store(int32(ModePolling)) // for Drain
		unobserve()
		if !closed(r.stop) {
			// Nobody called Stop: the caller may not know that nothing is delivered now.
			d.log.Warn("dispatcher stopped: the context given to Start ended; messages are not delivered until Start is called again",
				slog.Any("cause", context.Cause(startCtx)))
		} else {
			d.log.Info("dispatcher stopped")
		}
		close(r.done)
	}()
	d.log.Info("dispatcher started", slog.String("store", d.st.Capabilities().Name), slog.Int("workers", d.cfg.Workers),
		slog.Int("batch_size", d.cfg.BatchSize), slog.Int("concurrency", d.cfg.Concurrency))
	return nil
}

// Stop stops claiming messages and waits for the messages in flight to be published and
// recorded. If ctx ends first, Stop abandons the in-flight messages (their publish context is
// cancelled; those not yet published are given back or come back after their lease) and
// returns ctx's error without waiting for the publisher. Stop on a dispatcher that is not
// running returns nil, as does Stop after the context given to Start ended, which stopped
// the dispatcher already (and logged it).
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.mu.Lock()
	r := d.run
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	r.stopOnce.Do(func() { close(r.stop) })
	select {
	case <-r.done:
		r.cancel()
		return nil
	case <-ctx.Done():
		r.cancel()
		return fmt.Errorf("outbox: dispatcher stop: %w", ctx.Err())
	}
}

// Run starts the dispatcher and blocks until ctx ends, then stops it gracefully within
// Config.ShutdownTimeout.
func (d *Dispatcher) Run(ctx context.Context) error {
	if err := d.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ShutdownTimeout)
	defer cancel()
	return d.Stop(stopCtx)
}

// Drain delivers the messages that are due now, batch after batch, until none is left, and
// returns how many were published. It runs in the caller's goroutine (a batch's keys are
// published in parallel) and needs no Start. Messages waiting for a retry are not waited for.
func (d *Dispatcher) Drain(ctx context.Context) (int, error) {
	total := 0
	for {
		claimed, published, err := d.dispatch(ctx)
		total += published
		if err != nil || claimed == 0 {
			return total, err
		}
	}
}

// loop is one worker: it claims, publishes and records batches until the run stops. Only
// the lead worker polls and listens while the outbox is idle; the others rest until a worker
// claims a full batch, a sign of a backlog, so idle costs one worker's queries.
func (d *Dispatcher) loop(ctx context.Context, r *run, lead bool) {
	var signals <-chan struct{}
	if n, ok := d.st.(store.Notifier); ok && lead {
		ch, unsubscribe := n.Subscribe()
		defer unsubscribe()
		signals = ch
	}
	errWait := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(max(d.cfg.PollInterval, 5*time.Second)),
		backoff.WithMaxElapsedTime(0),
	)
	idle := minPoll
	for {
		select {
		case <-r.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		claimed, _, err := d.dispatch(ctx)
		var (
			wait time.Duration
			rest bool // until a backlog, without a timer
		)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			wait = errWait.NextBackOff()
			d.log.Error("dispatch failed; retrying", slog.Any("error", err), slog.Duration("retry_in", wait))
		case claimed > 0:
			if claimed >= d.cfg.BatchSize {
				select {
				case r.more <- struct{}{}:
				default:
				}
			}
			errWait.Reset()
			idle = minPoll
			continue
		case !lead:
			errWait.Reset()
			rest = true
		case d.mode() != ModePolling:
			// Looking costs no query: claimParams says when the sweep is due.
			errWait.Reset()
			wait = min(d.cfg.PollInterval, sweepTick)
		default:
			errWait.Reset()
			wait = idle
			idle = min(idle*2, d.cfg.PollInterval)
		}
		var (
			wakeUps = signals
			expired <-chan time.Time
		)
		switch {
		case rest:
			wakeUps = r.more
		case d.mode() != ModePolling:
			wakeUps = nil // the log reader delivers new messages; the sweep keeps its pace
			fallthrough
		default:
			expired = time.After(wait)
		}
		select {
		case <-r.stop:
			return
		case <-ctx.Done():
			return
		case <-wakeUps:
			idle = minPoll
		case <-expired:
		}
	}
}

// purgeEvery is how often a dispatcher purges delivered messages past Config.Retention: on
// a server a purge is three queries (take the lock, delete, give the lock back), which every
// minute would add a twentieth of a query a second to an idle outbox.
const purgeEvery = 10 * time.Minute

// purge deletes delivered messages past their retention now and every purgeEvery, until the
// run stops. The store lets one purge run at a time per database.
func (d *Dispatcher) purge(ctx context.Context, r *run, op store.Operator) {
	tick := time.NewTicker(purgeEvery)
	defer tick.Stop()
	for {
		n, err := op.Purge(ctx, &store.PurgeParams{OlderThan: d.cfg.Retention})
		switch {
		case err != nil && ctx.Err() == nil:
			d.log.Warn("purge of delivered messages failed", slog.Any("error", err))
		case n > 0:
			d.log.Info("purged delivered messages", slog.Int64("count", n), slog.Duration("older_than", d.cfg.Retention))
		}
		select {
		case <-r.stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// dispatch claims one batch, publishes it and records the outcome. It returns how many
// messages it claimed and how many were published.
func (d *Dispatcher) dispatch(ctx context.Context) (claimed, published int, err error) {
	p := d.claimParams()
	if p == nil {
		return 0, 0, nil
	}
	start := time.Now()
	p.Token = uuid.NewString()
	res, err := d.st.Claim(ctx, p)
	if err != nil {
		// The claim may have taken effect all the same (a call cancelled as it committed):
		// give back whatever it took rather than leave it to the lease.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		if rerr := d.st.Release(rctx, &store.ReleaseParams{Token: p.Token, All: true}); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return 0, 0, err
	}
	if len(res.Messages) == 0 {
		return 0, 0, nil
	}
	release := d.holdClaim(ctx, res.Token, start)
	out := d.deliver(ctx, res.Messages)
	// Beside a log reader, the sweep goes on while it finds messages, and comes back for
	// those it leaves to a retry.
	defer func() {
		d.sweepBusy(time.Now())
		d.followUp(out)
	}()

	// Record the outcome even if ctx was cancelled meanwhile: what the broker acknowledged
	// must be marked, or it is published again.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	var errs []error
	if len(out.delivered) > 0 {
		errs = append(errs, retry(rctx, func() error {
			return d.st.MarkDelivered(rctx, &store.MarkDeliveredParams{IDs: out.delivered, Delete: d.cfg.DeleteDelivered})
		}))
	}
	if len(out.failures) > 0 {
		errs = append(errs, retry(rctx, func() error {
			return d.st.Fail(rctx, &store.FailParams{Token: res.Token, Failures: out.failures})
		}))
	}
	if len(out.unattempted) > 0 {
		errs = append(errs, retry(rctx, func() error {
			return d.st.Release(rctx, &store.ReleaseParams{Token: res.Token, IDs: out.unattempted})
		}))
	}
	if heldUntil := release(); time.Now().After(heldUntil) {
		took := time.Since(start)
		d.overrun.Add(int64(len(res.Messages)))
		d.metrics.overrun.Add(ctx, int64(len(res.Messages)))
		d.log.Warn("a batch was recorded after its lease ran out: other dispatchers may have published its messages too",
			slog.Int("messages", len(res.Messages)), slog.Duration("took", took), slog.Duration("lease", d.cfg.Lease))
	}
	return len(res.Messages), len(out.delivered), errors.Join(errs...)
}

// retry runs a database call that records a batch's outcome until it succeeds, a few times
// within ctx: a lost connection should not cost a whole batch of duplicates after its lease.
func retry(ctx context.Context, call func() error) error {
	b := backoff.WithContext(backoff.WithMaxRetries(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxElapsedTime(0)), 4), ctx)
	return backoff.Retry(call, b)
}
