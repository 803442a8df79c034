package mysqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"
)

const (
	// A batch holds up to LogConsumer.Batch() messages; it also ends when the stream has
	// nothing more at hand, or logBatchWait after its first message.
	logBatchWait = 1 * time.Millisecond
	// positionEvery is how often, at most, the position is stored after transactions that
	// wrote no outbox message (a batch stores it with its marks).
	positionEvery = time.Second
)

// batchTx is a transaction whose messages are in the batch.
type batchTx struct {
	end int      // index in the batch after its last message
	pos position // after it
}

// settle hands the batch over when it is full, old, or the stream is idle, and otherwise
// stores a position that moved past other tables' changes, at most every positionEvery.
func (r *reader) settle(ctx context.Context, idle bool) error {
	switch {
	case len(r.batch) > 0:
		for len(r.batch) >= r.c.Batch() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := r.flush(ctx, r.c.Batch()); err != nil {
				return err
			}
		}
		if len(r.batch) > 0 && (idle || time.Since(r.batchAt) >= logBatchWait) {
			return r.flush(ctx, len(r.batch))
		}
	case r.dirty && r.recording == nil && time.Since(r.storedAt) >= positionEvery:
		p := r.read.clone()
		if err := r.savePosition(ctx, r.s.DB(), p); err != nil {
			return fmt.Errorf("outbox: store the log position of %s: %w", r.s.Table(), err)
		}
		r.flushed, r.queued, r.dirty, r.storedAt = p, p, false, time.Now()
	}
	return nil
}

// flush publishes the first n messages of the batch, and records their outcome with the
// position after them while the reader goes on: one batch records while the next is read
// and published. A transaction larger than a batch is cut: the position recorded with its
// first part is the one before it, so that after a crash it is read again, and its messages
// recorded as delivered are skipped.
func (r *reader) flush(ctx context.Context, n int) error {
	if r.recordHold {
		// Its failures and hand-overs hold keys back, which the next batch must see.
		if err := r.waitRecorded(); err != nil {
			return err
		}
	}
	chunk := r.batch[:n]
	p, whole := r.queued, 0
	for _, tx := range r.batchTxs {
		if tx.end > n {
			break
		}
		p, whole = tx.pos, whole+1
	}
	if n == len(r.batch) {
		p = r.read.clone() // also past other tables' changes read since
	}
	lb, err := r.s.PublishLog(ctx, r.c, chunk, r.lookup)
	if err != nil {
		return err
	}
	// Outcomes and positions are recorded in order.
	if err := r.waitRecorded(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- lb.Record(ctx, func(ctx context.Context, tx *sql.Tx) error {
			if hook := recordHook.Load(); hook != nil {
				(*hook)(r.schema)
			}
			return r.savePosition(ctx, tx, p)
		})
	}()
	r.recording, r.recordPos, r.recordHold, r.queued = done, p, lb.HoldsKeys(), p
	r.batchTxs = r.batchTxs[whole:]
	for i := range r.batchTxs {
		r.batchTxs[i].end -= n
	}
	if r.batch = r.batch[n:]; len(r.batch) == 0 {
		r.batch, r.batchTxs, r.dirty = nil, nil, false
	}
	r.heard = time.Now()
	return nil
}

// recordHook, set by tests, runs in the transaction that records a batch, with the outbox
// table's database.
var recordHook atomic.Pointer[func(schema string)]

// waitRecorded waits for the batch being recorded, if any.
func (r *reader) waitRecorded() error {
	if r.recording == nil {
		return nil
	}
	return r.recorded(<-r.recording)
}

// recorded takes the result of recording a batch.
func (r *reader) recorded(err error) error {
	r.recording, r.recordHold = nil, false
	if err != nil {
		return err
	}
	r.flushed, r.storedAt = r.recordPos, time.Now()
	r.advance()
	return nil
}

// done is the position up to which every message read is recorded.
func (r *reader) done() position {
	if len(r.batch) == 0 && r.recording == nil {
		return r.read
	}
	return r.flushed
}
