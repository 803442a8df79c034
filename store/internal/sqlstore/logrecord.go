package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/outboxgo/outbox/store"
)

// logRecord is what recording a log batch writes.
type logRecord struct {
	delivered []int64
	failures  []store.Failure
	handOver  []int64
	// marks are messages the batch found held (by a claim, or a failure): recording marks
	// those not marked yet as held (next_attempt_at), so that later batches find them
	// through the held-key index.
	marks []int64
	// logOnly are the batch's log-only messages that were not delivered, by id: recording
	// inserts them into the table, failed or handed over, for polling.
	logOnly map[string]LogMessage
	seqOf   map[string]int64 // the seqs of the messages to publish, by id
}

// merge adds o to r, so that both are recorded in one transaction.
func (r *logRecord) merge(o *logRecord) {
	r.delivered = append(r.delivered, o.delivered...)
	r.failures = append(r.failures, o.failures...)
	r.handOver = append(r.handOver, o.handOver...)
	r.marks = append(r.marks, o.marks...)
	for _, m := range o.logOnly {
		r.keepLogOnly(m)
	}
}

func (r *logRecord) keepLogOnly(m LogMessage) {
	if r.logOnly == nil {
		r.logOnly = map[string]LogMessage{}
	}
	r.logOnly[m.ID] = m
}

// settle adds to the record what became of the batch's published messages: delivered ones
// are marked (log-only ones have no row to mark), failed ones recorded, and the others
// handed over to polling.
func (r *logRecord) settle(b *store.LogBatch) {
	seen := make(map[string]bool, len(b.Publish))
	for _, id := range b.Outcome.Delivered {
		if seq, ok := r.seqOf[id]; ok && !seen[id] {
			if _, logOnly := r.logOnly[id]; logOnly {
				delete(r.logOnly, id)
			} else {
				r.delivered = append(r.delivered, seq)
			}
		}
		seen[id] = true
	}
	for _, f := range b.Outcome.Failures {
		if _, ok := r.seqOf[f.ID]; ok && !seen[f.ID] {
			r.failures = append(r.failures, f)
		}
		seen[f.ID] = true
	}
	for _, m := range b.Publish {
		if !seen[m.ID] {
			r.handOver = append(r.handOver, r.seqOf[m.ID])
		}
	}
}

// RecordLog implements [store.LogStream].Record for a stream of this store: it records the
// outcome of bs, each filtered by [Store.FilterLog], and checkpoint(tx) when it is not nil,
// in one transaction, retrying a few times. It runs even if ctx has ended: what the broker
// acknowledged must be marked.
func (s *Store) RecordLog(ctx context.Context, bs []*store.LogBatch, deleting bool, checkpoint func(context.Context, *sql.Tx) error) error {
	all := &logRecord{}
	for _, b := range bs {
		rec := ReadOf(b).filtered
		if rec == nil {
			return fmt.Errorf("outbox: record a log batch of %s that was not filtered", s.t)
		}
		rec.settle(b)
		all.merge(rec)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	bo := backoff.WithContext(backoff.WithMaxRetries(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxElapsedTime(0)), 4), rctx)
	return backoff.Retry(func() error {
		return s.recordLog(rctx, all, deleting, checkpoint)
	}, bo)
}

// recordLog records a log batch's outcome, and the reader's checkpoint, in one transaction.
// Rows a sweep claimed meanwhile are left to it, except that an acknowledged message is
// marked delivered whoever holds it.
func (s *Store) recordLog(ctx context.Context, batch *logRecord, deleting bool, checkpoint func(context.Context, *sql.Tx) error) error {
	delivered, failures, handOver := batch.delivered, batch.failures, batch.handOver
	markDelivered := func(db store.Execer, seqs []int64, async bool) error {
		b := builder{d: s.d}
		_, err := db.ExecContext(ctx, s.markDelivered(b.inSeqs("seq", seqs), deleting, async), b.args...)
		return err
	}
	if checkpoint == nil && len(failures)+len(handOver)+len(batch.marks) == 0 && len(delivered) <= s.d.MaxParams-8 {
		// The usual outcome, all delivered, is one statement in a transaction of its own.
		if len(delivered) == 0 {
			return nil // log-only messages: nothing to write
		}
		if err := markDelivered(s.db, delivered, true); err != nil {
			return fmt.Errorf("outbox: mark %d logged messages delivered in %s: %w", len(delivered), s.t, err)
		}
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: record logged messages in %s: %w", s.t, err)
	}
	defer tx.Rollback()
	if s.d.AsyncCommit != "" {
		// A mark lost in a server crash costs a duplicate from the sweep, not a message.
		if _, err := tx.ExecContext(ctx, "SELECT * FROM "+s.d.AsyncCommit); err != nil {
			return err
		}
	}
	err = inChunks(delivered, s.d.MaxParams-8, func(seqs []int64) error { return markDelivered(tx, seqs, false) })
	if err != nil {
		return fmt.Errorf("outbox: mark %d logged messages delivered in %s: %w", len(delivered), s.t, err)
	}
	if err := s.recordHandOver(ctx, tx, batch); err != nil {
		return err
	}
	if checkpoint != nil {
		if err := checkpoint(ctx, tx); err != nil {
			return fmt.Errorf("outbox: store the log position of %s: %w", s.t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: record logged messages in %s: %w", s.t, err)
	}
	return nil
}

// recordHandOver records in tx the failures of a log batch and what it hands over to
// polling, and marks the rows a claim held as held.
func (s *Store) recordHandOver(ctx context.Context, tx *sql.Tx, batch *logRecord) error {
	t := s.t.String()
	handOver := batch.handOver
	logOnly, err := s.recordLogFailures(ctx, tx, batch)
	if err != nil {
		return err
	}
	// A handed-over message gets an expired claim: that makes it held, which a sweep claims
	// at once and which holds back the later messages of its key.
	if len(batch.logOnly) > 0 {
		bySeq := make(map[int64]LogMessage, len(batch.logOnly))
		for _, m := range batch.logOnly {
			bySeq[m.Seq] = m
		}
		handOver = slices.DeleteFunc(slices.Clone(handOver), func(seq int64) bool {
			m, ok := bySeq[seq]
			if ok {
				logOnly = append(logOnly, logOnlyRow{m: m, state: store.Pending, handedOver: true})
			}
			return ok
		})
	}
	if err := s.insertLogOnly(ctx, tx, logOnly); err != nil {
		return fmt.Errorf("outbox: put %d failed or handed-over log-only messages into %s: %w", len(logOnly), s.t, err)
	}
	// next_attempt_at marks them as held for the log reader's lookup; a message that never
	// failed is due whatever it says.
	err = inChunks(handOver, s.d.MaxParams-8, func(seqs []int64) error {
		b := builder{d: s.d}
		_, err := tx.ExecContext(ctx, "UPDATE "+t+" SET claimed_until = "+s.d.Now+", next_attempt_at = "+s.d.Now+
			" WHERE state = 'pending' AND claimed_until = "+s.d.Epoch+" AND "+b.inSeqs("seq", seqs), b.args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("outbox: hand %d logged messages over to polling in %s: %w", len(handOver), s.t, err)
	}
	err = inChunks(batch.marks, s.d.MaxParams-8, func(seqs []int64) error {
		b := builder{d: s.d}
		_, err := tx.ExecContext(ctx, "UPDATE "+t+" SET next_attempt_at = "+s.d.Now+
			" WHERE state = 'pending' AND next_attempt_at = "+s.d.Epoch+" AND "+b.inSeqs("seq", seqs), b.args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("outbox: mark %d claimed messages as held in %s: %w", len(batch.marks), s.t, err)
	}
	return nil
}

// recordLogFailures records the failed attempts of a log batch in tx, and returns the
// failed log-only messages, which have no row to update: they are inserted instead.
func (s *Store) recordLogFailures(ctx context.Context, tx *sql.Tx, batch *logRecord) ([]logOnlyRow, error) {
	var logOnly []logOnlyRow
	for _, f := range batch.failures {
		b := builder{d: s.d}
		state := store.Pending
		if f.Park {
			state = store.Parked
		}
		if m, ok := batch.logOnly[f.ID]; ok {
			logOnly = append(logOnly, logOnlyRow{m: m, state: state, attempts: 1, lastError: f.Error, retryAfter: f.RetryAfter})
			continue
		}
		q := "UPDATE " + s.t.String() + " SET attempts = attempts + 1, state = " + b.arg(string(state)) +
			", last_error = " + b.arg(f.Error) + ", next_attempt_at = " + b.nowPlus(f.RetryAfter) +
			" WHERE state = 'pending' AND claimed_until = " + s.d.Epoch + " AND id = " + b.arg(f.ID)
		if _, err := tx.ExecContext(ctx, q, b.args...); err != nil {
			return nil, fmt.Errorf("outbox: record failure of logged message %s in %s: %w", f.ID, s.t, err)
		}
	}
	return logOnly, nil
}

// logOnlyRow is a log-only message as recording puts it into the table.
type logOnlyRow struct {
	m          LogMessage
	state      store.State
	attempts   int
	lastError  string
	retryAfter time.Duration
	handedOver bool // given an expired claim, as handed-over rows are
}

const logOnlyColumns = 12

// insertLogOnly puts log-only messages into the table, under the seqs they were written with,
// so that polling retries them in their place; a row already there (recorded before a crash)
// stays as it is.
func (s *Store) insertLogOnly(ctx context.Context, tx *sql.Tx, rows []logOnlyRow) error {
	return inChunks(rows, (s.d.MaxParams-8)/logOnlyColumns, func(rows []logOnlyRow) error {
		b := builder{d: s.d, args: make([]any, 0, len(rows)*logOnlyColumns)}
		values := make([]string, len(rows))
		for i, r := range rows {
			headers, err := store.EncodeHeaders(r.m.Headers)
			if err != nil {
				return fmt.Errorf("message %s: %w", r.m.ID, err)
			}
			claimed := s.d.Epoch
			if r.handedOver {
				claimed = s.d.Now
			}
			var lastError any
			if r.lastError != "" {
				lastError = r.lastError
			}
			values[i] = "(" + strings.Join([]string{b.arg(r.m.Seq), b.arg(r.m.ID), b.arg(r.m.Topic), b.arg(r.m.Key), b.arg(payloadArg(r.m.Payload)),
				b.arg(headers), b.arg(s.d.timeArg(r.m.CreatedAt)), b.arg(string(r.state)), b.arg(r.attempts), b.arg(lastError),
				b.nowPlus(r.retryAfter), claimed}, ",") + ")"
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO "+s.t.String()+" (seq, id, topic, message_key, payload, headers, created_at, state, attempts, last_error, next_attempt_at, claimed_until)"+
			" "+s.logOnly.KeepSeq+" VALUES "+strings.Join(values, ",")+" "+s.logOnly.SkipConflicts, b.args...)
		return err
	})
}
