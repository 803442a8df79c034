package dispatcher

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/outboxgo/outbox/store"
)

// DefaultMaxLag is the default of StatusConfig.MaxLag.
const DefaultMaxLag = time.Minute

// StatusConfig configures [Dispatcher.StatusHandler].
type StatusConfig struct {
	// MaxLag is the oldest a pending message may be before the outbox is reported unhealthy.
	// Defaults to DefaultMaxLag.
	MaxLag time.Duration
}

// Status is what the status handler reports, as JSON.
type Status struct {
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason,omitempty"`
	Store   string `json:"store"`
	// Mode is how messages are found: "log", "standby" (another dispatcher reads the log),
	// "polling", or "stopped" when the dispatcher is not running.
	Mode string `json:"mode"`
	// LogLagBytes is, in log mode, how far the log reader's confirmed position is behind the
	// end of the log (-1 when not known).
	LogLagBytes int64 `json:"log_lag_bytes,omitempty"`
	Running     bool  `json:"running"`
	// Pending, Parked, OldestPendingAgeSeconds and DeliveredLastMinute come from the store.
	Pending                 int64   `json:"pending"`
	Parked                  int64   `json:"parked"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	DeliveredLastMinute     int64   `json:"delivered_last_minute"`
	// Published, Failed and ParkedByThisDispatcher count what this dispatcher did.
	Published              int64 `json:"published"`
	Failed                 int64 `json:"failed_attempts"`
	ParkedByThisDispatcher int64 `json:"parked_by_this_dispatcher"`
}

// StatusHandler returns an http.Handler for the application to mount, reporting the outbox's
// [Status] as JSON. It answers 200 when healthy and 503 when not (the dispatcher is not
// running, the store cannot be read, or the oldest pending message is older than
// cfg.MaxLag), so it can serve as a readiness probe. Parked messages alone do not make the
// outbox unhealthy: they wait for an operator, and Parked shows them.
func (d *Dispatcher) StatusHandler(cfg StatusConfig) http.Handler {
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = DefaultMaxLag
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := d.Status(r.Context(), cfg.MaxLag)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !st.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(st)
	})
}

// Status reads the outbox's status now; maxLag is the oldest a pending message may be.
func (d *Dispatcher) Status(ctx context.Context, maxLag time.Duration) Status {
	stats := d.Stats()
	mode := d.Mode()
	st := Status{
		Healthy:                true,
		Store:                  d.st.Capabilities().Name,
		Mode:                   mode.String(),
		Running:                mode != ModeStopped,
		Published:              stats.Published,
		Failed:                 stats.Failed,
		ParkedByThisDispatcher: stats.Parked,
	}
	unhealthy := func(reason string) {
		if st.Healthy {
			st.Healthy, st.Reason = false, reason
		}
	}
	if mode == ModeLog {
		st.LogLagBytes = d.logs.lagBytes.Load()
	}
	if !st.Running {
		unhealthy(d.notRunning())
	}
	op, ok := d.st.(store.Operator)
	if !ok {
		if err := d.st.Check(ctx); err != nil {
			unhealthy(err.Error())
		}
		return st
	}
	s, err := op.Stats(ctx)
	if err != nil {
		unhealthy(err.Error())
		return st
	}
	st.Pending, st.Parked, st.DeliveredLastMinute = s.Pending, s.Parked, s.DeliveredLastMinute
	if !s.OldestPending.IsZero() {
		age := time.Since(s.OldestPending)
		st.OldestPendingAgeSeconds = age.Seconds()
		if age > maxLag {
			unhealthy("oldest pending message is " + age.Round(time.Second).String() + " old, more than " + maxLag.String())
		}
	}
	return st
}

// running reports whether the dispatcher was started, and neither stopped nor left to stop
// by the end of the context given to Start.
func (d *Dispatcher) running() bool {
	d.mu.Lock()
	r := d.run
	d.mu.Unlock()
	return r != nil && !r.ended()
}

// notRunning says why the dispatcher is not running.
func (d *Dispatcher) notRunning() string {
	d.mu.Lock()
	r := d.run
	d.mu.Unlock()
	if r != nil && !closed(r.stop) && r.ctx.Err() != nil {
		return "dispatcher not running: the context given to Start ended (" + context.Cause(r.ctx).Error() + ")"
	}
	return "dispatcher not running"
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
