package dispatcher

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/outboxgo/outbox/store"
)

// Mode is how a dispatcher finds messages.
type Mode int32

const (
	// ModePolling claims due messages from the table.
	ModePolling Mode = iota
	// ModeStandby waits while another dispatcher reads the change log.
	ModeStandby
	// ModeLog reads the change log, and sweeps the table for what the log did not carry.
	ModeLog
	// ModeStopped delivers nothing: the dispatcher was never started, was stopped, or the
	// context given to Start ended. [Dispatcher.Drain] works all the same.
	ModeStopped
)

func (m Mode) String() string {
	switch m {
	case ModeStandby:
		return "standby"
	case ModeLog:
		return "log"
	case ModeStopped:
		return "stopped"
	}
	return "polling"
}

// logFailover is how long a log reader that keeps failing with errors worth a retry is
// retried before the dispatcher polls meanwhile.
const logFailover = 5 * time.Second

// logState is what the log reader last reported.
type logState struct {
	mode     atomic.Int32
	caughtUp atomic.Int64 // unix nanoseconds; 0: not yet
	lagBytes atomic.Int64
	readAt   atomic.Int64 // unix nanoseconds of the last report while reading
	warnedAt atomic.Int64 // unix nanoseconds of the last lag warning

	// The sweep claims every sweepEvery, and at the polling pace until busyUntil while it
	// has messages to deliver: those it found, and those the log path failed or left
	// unattempted, until their retry is due.
	sweptAt   atomic.Int64 // unix nanoseconds of the last full sweep's claim
	lookedAt  atomic.Int64 // unix nanoseconds of the last claim beside the log, full or not
	busyUntil atomic.Int64 // unix nanoseconds

	// logPublished counts the messages the log reader's batches published. An outage (the
	// dispatcher polls because the log cannot be read) began at outageAt (unix nanoseconds;
	// 0: none), when Stats().Published and logPublished were outagePublished and
	// outageLogPublished: what polling published meanwhile is the difference.
	logPublished       atomic.Int64
	outageAt           atomic.Int64
	outagePublished    atomic.Int64
	outageLogPublished atomic.Int64
	outageReason       atomic.Pointer[string] // the reason last logged
}

// handedOverEvery is how often, beside a log reader, the sweep claims the messages handed
// over to polling (failed, left behind a failure, requeued) when no full sweep is due: a
// requeued message goes out within seconds, for a query every two seconds.
const handedOverEvery = 2 * time.Second

// sweepTick is how often a worker beside a log reader looks whether the sweep is due.
const sweepTick = 250 * time.Millisecond

// handedOverOnly, as a sweep's OlderThan, is older than any message: the sweep then claims
// only handed-over messages.
const handedOverOnly = 100 * 365 * 24 * time.Hour

// sweepEvery is how often the sweep claims when nothing calls for it sooner: a quarter of
// SweepAfter, at most 15 s. A message the log did not carry waits SweepAfter and at most
// that much more.
func (d *Dispatcher) sweepEvery() time.Duration {
	return min(d.cfg.SweepAfter/4, 15*time.Second)
}

// sweepBusy keeps the sweep at the polling pace until a while after at: a poll interval,
// and at least a second, for the outcome that calls for it to be recorded.
func (d *Dispatcher) sweepBusy(at time.Time) {
	t := at.Add(max(d.cfg.PollInterval, time.Second)).UnixNano()
	for {
		cur := d.logs.busyUntil.Load()
		if cur >= t || d.logs.busyUntil.CompareAndSwap(cur, t) {
			return
		}
	}
}

// followUp keeps the sweep busy for what an outcome leaves to it: failed messages until
// their retry is due, and messages left unattempted or after a parked one.
func (d *Dispatcher) followUp(out *outcome) {
	now := time.Now()
	if len(out.unattempted) > 0 || len(out.parked) > 0 {
		d.sweepBusy(now)
	}
	for _, f := range out.failures {
		d.sweepBusy(now.Add(f.RetryAfter))
	}
}

// Mode returns how the dispatcher finds messages now: [ModeStopped] whenever it is not
// running (never started, stopped, or the context given to Start ended).
func (d *Dispatcher) Mode() Mode {
	if !d.running() {
		return ModeStopped
	}
	return d.mode()
}

// mode is how the dispatcher finds messages while it runs, and polling otherwise (as Drain
// does). The dispatcher's own decisions go by it: a run that is ending must not claim as if
// it polled.
func (d *Dispatcher) mode() Mode { return Mode(d.logs.mode.Load()) }

func (d *Dispatcher) setMode(m Mode) {
	if old := Mode(d.logs.mode.Swap(int32(m))); old != m {
		d.log.Info("dispatcher mode changed", slog.String("from", old.String()), slog.String("to", m.String()))
	}
}

// logReader is the store's change log reader, when the store has one and Config.PollOnly is
// not set.
func (d *Dispatcher) logReader() store.LogReader {
	lr, ok := d.st.(store.LogReader)
	if !ok || d.cfg.PollOnly || !d.st.Capabilities().ChangeLog {
		return nil
	}
	return lr
}

// claimParams is the claim for the current mode, or nil when this dispatcher should not claim:
// a standby, a log reader that has not caught up once yet, or a sweep that is not due. Beside
// a log reader, claims only sweep messages the log did not carry or left to polling.
func (d *Dispatcher) claimParams() *store.ClaimParams {
	p := &store.ClaimParams{Limit: d.cfg.BatchSize, Lease: d.cfg.Lease}
	switch d.mode() {
	case ModeStandby:
		return nil
	case ModeLog:
		caughtUp := d.logs.caughtUp.Load()
		if caughtUp == 0 {
			return nil
		}
		// While nothing calls for the sweep, it claims once a look is due, and a full sweep
		// takes the place of a look rather than adding a query: whichever look comes before
		// sweepEvery would pass is a full one.
		now := time.Now()
		busy := now.UnixNano() <= d.logs.busyUntil.Load()
		every := min(handedOverEvery, d.sweepEvery())
		if !busy && now.Sub(time.Unix(0, d.logs.lookedAt.Load())) < every {
			return nil
		}
		d.logs.lookedAt.Store(now.UnixNano())
		p.OlderThan = handedOverOnly
		if busy || now.Sub(time.Unix(0, d.logs.sweptAt.Load()))+every > d.sweepEvery() {
			d.logs.sweptAt.Store(now.UnixNano())
			// Durations, not times: the store compares them with the database's clock.
			p.OlderThan = now.Sub(time.Unix(0, caughtUp)) + d.cfg.SweepAfter
		}
	}
	return p
}

// readLog runs the store's log reader until the run stops: it becomes the reader or a
// standby, falls back to polling while the log is unavailable, and tries the log again every
// Config.LogRetry. An outage is logged once as a warning when it begins, and once when the
// log is read again (see logStatus).
func (d *Dispatcher) readLog(ctx context.Context, r *run, lr store.LogReader) {
	readCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.stop:
		case <-readCtx.Done():
		}
		cancel()
	}()
	d.logs.outageAt.Store(0) // an outage of an earlier run ended with it
	opts := store.LogOptions{Status: d.logStatus, DeleteDelivered: d.cfg.DeleteDelivered, BatchSize: d.cfg.BatchSize}
	wait := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	var failingSince time.Time // first failure since the reader last read
	for {
		started := time.Now()
		err := d.readLogOnce(readCtx, ctx, lr, opts)
		if readCtx.Err() != nil {
			return
		}
		var pause time.Duration
		if errors.Is(err, store.ErrLogUnavailable) {
			pause = d.cfg.LogRetry
			d.logOutage("change log unavailable; polling", err, pause)
			d.setMode(ModePolling)
		} else {
			if time.Since(started) > logFailover {
				wait.Reset()
			}
			if lastRead := time.Unix(0, d.logs.readAt.Load()); failingSince.IsZero() || lastRead.After(failingSince) {
				failingSince = time.Now()
			}
			pause = wait.NextBackOff()
			switch {
			case d.mode() == ModePolling:
				// The outage goes on: it was logged when it began.
				d.logOutage("change log reader keeps failing; polling until it is back", err, pause)
			case time.Since(failingSince) > logFailover:
				// A new reader often fails a few times at first (the server still holds the
				// slot for the one that died): poll only if failures last.
				d.logOutage("change log reader keeps failing; polling until it is back", err, pause)
				d.setMode(ModePolling)
			default:
				d.log.Warn("change log reader stopped; retrying", slog.Any("error", err), slog.Duration("retry_in", pause))
			}
		}
		timer := time.NewTimer(pause)
		select {
		case <-readCtx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// readLogOnce opens the log, once this instance leads, and follows it until reading stops
// or fails.
func (d *Dispatcher) readLogOnce(ctx, pubCtx context.Context, lr store.LogReader, opts store.LogOptions) error {
	stream, err := lr.OpenLog(ctx, opts)
	if err != nil {
		return err
	}
	err = d.follow(ctx, pubCtx, stream)
	if cerr := stream.Close(); err == nil {
		err = cerr
	}
	return err
}

// logOutage logs that the log cannot be read and the dispatcher polls: a warning when the
// outage begins, and afterwards only a change of reason, at info level; the same reason again
// at debug level. The outage ends when the log is read again (logStatus).
func (d *Dispatcher) logOutage(msg string, err error, retry time.Duration) {
	reason := err.Error()
	last := d.logs.outageReason.Swap(&reason)
	now := time.Now()
	switch {
	case d.logs.outageAt.CompareAndSwap(0, now.UnixNano()):
		d.logs.outagePublished.Store(d.published.Load())
		d.logs.outageLogPublished.Store(d.logs.logPublished.Load())
		d.log.Warn(msg, slog.Any("reason", err), slog.Duration("retry_in", retry))
	case last == nil || *last != reason:
		d.log.Info("change log still unavailable; polling", slog.Any("reason", err), slog.Duration("retry_in", retry))
	default:
		d.log.Debug("change log still unavailable; polling", slog.Any("reason", err), slog.Duration("retry_in", retry))
	}
}

// endOutage logs, once, that an outage of the log ended: how long it lasted, and how many
// messages went out by polling meanwhile.
func (d *Dispatcher) endOutage(how string) {
	began := d.logs.outageAt.Swap(0)
	if began == 0 {
		return
	}
	polled := (d.published.Load() - d.logs.outagePublished.Load()) - (d.logs.logPublished.Load() - d.logs.outageLogPublished.Load())
	d.log.Info("change log back; "+how, slog.Duration("unavailable_for", time.Since(time.Unix(0, began)).Round(time.Millisecond)),
		slog.Int64("published_by_polling", polled))
}

// logStatus takes the log reader's reports.
// A reader reports that it reads only once the server streams to it, so a mode of log holds.
func (d *Dispatcher) logStatus(s store.LogStatus) {
	if !s.Reading {
		d.logs.caughtUp.Store(0)
		d.setMode(ModeStandby)
		d.endOutage("another instance reads it; standing by")
		return
	}
	d.endOutage("reading it again")
	d.logs.readAt.Store(time.Now().UnixNano())
	if !s.CaughtUp.IsZero() {
		d.logs.caughtUp.Store(s.CaughtUp.UnixNano())
	}
	d.logs.lagBytes.Store(s.LagBytes)
	d.setMode(ModeLog)
	if s.LagBytes > d.cfg.LogLagWarning {
		now := time.Now().UnixNano()
		if last := d.logs.warnedAt.Load(); now-last >= int64(time.Minute) && d.logs.warnedAt.CompareAndSwap(last, now) {
			d.log.Warn("the change log reader is falling behind; the server keeps the log it has not read",
				slog.Int64("lag_bytes", s.LagBytes), slog.Int64("warning_above", d.cfg.LogLagWarning))
		}
	}
}
