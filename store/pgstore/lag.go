package pgstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store"
)

// sampleEvery is how often the reader samples the server's WAL end, which tells when it has
// caught up and how far behind it is.
const sampleEvery = 2 * time.Second

// walSample is the server's WAL end at a time.
type walSample struct {
	at  time.Time
	lsn pglogrepl.LSN
}

// sample reads the server's WAL end now and the slot's lag behind it. A slot that is gone
// makes the log unavailable.
func (r *reader) sample(ctx context.Context) (walSample, int64, error) {
	at := time.Now()
	var (
		end string
		lag sql.NullInt64
	)
	// Not cancelled with ctx: cancelling a query closes the connection, and the lock it holds
	// would stay taken until the server notices, keeping the next reader waiting.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := r.lockConn.QueryRowContext(qctx, "SELECT pg_current_wal_lsn()::text, (SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1)", r.slot).Scan(&end, &lag)
	if err != nil {
		return walSample{}, 0, fmt.Errorf("outbox: sample WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(end)
	if err != nil {
		return walSample{}, 0, err
	}
	if !lag.Valid {
		if r.s.RecoversLostLog() {
			r.loss = slotMissing
			r.s.LogLost() // the next try creates it
			return walSample{}, 0, r.lostSlot()
		}
		return walSample{}, 0, fmt.Errorf("%w: replication slot %s was dropped", store.ErrLogUnavailable, r.slot)
	}
	return walSample{at: at, lsn: lsn}, lag.Int64, nil
}

// progress is how far the reader is behind the server, as its samples tell.
type progress struct {
	samples  []walSample // not yet covered by the confirmed position
	caughtUp time.Time
	lag      int64
}

// report samples the server's WAL end, passes the samples that the confirmed position covers,
// and reports the reader's status.
func (r *reader) report(ctx context.Context, p *progress) error {
	s, slotLag, err := r.sample(ctx)
	if err != nil {
		return err
	}
	p.lag = slotLag
	p.samples = append(p.samples, s)
	r.mu.Lock()
	confirmed := r.confirmed
	r.mu.Unlock()
	for len(p.samples) > 0 && confirmed >= p.samples[0].lsn {
		p.caughtUp = p.samples[0].at
		p.samples = p.samples[1:]
	}
	if r.o.Status != nil && r.streaming.Load() {
		r.o.Status(store.LogStatus{Reading: true, CaughtUp: p.caughtUp, LagBytes: p.lag})
	}
	return nil
}
