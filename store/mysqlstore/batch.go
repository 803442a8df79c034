package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

const (
	// A batch holds up to LogOptions.Batch() messages; it also ends when the stream has
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

// take returns a batch when one is due: a full one, or what the batch holds once the stream
// is idle or logBatchWait after its first message. With no batch, it stores a position that
// moved past other tables' changes, at most every positionEvery, while nothing is being
// recorded.
func (r *reader) take(ctx context.Context, idle bool) (*store.LogBatch, error) {
	n := len(r.batch)
	switch {
	case n == 0:
		return nil, r.storeIdlePosition(ctx)
	case n >= r.o.Batch():
		n = r.o.Batch()
	case !idle && time.Since(r.batchAt) < logBatchWait:
		return nil, nil
	}
	return r.cut(n), nil
}

// cut takes the first n messages of the batch, to be recorded with the position after them.
// A transaction larger than a batch is cut: the position recorded with its first part is the
// one before it, so that after a crash it is read again, and its messages recorded as
// delivered are skipped.
func (r *reader) cut(n int) *store.LogBatch {
	chunk := r.batch[:n:n]
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
	r.queued = p
	r.batchTxs = r.batchTxs[whole:]
	for i := range r.batchTxs {
		r.batchTxs[i].end -= n
	}
	if r.batch = r.batch[n:]; len(r.batch) == 0 {
		r.batch, r.batchTxs, r.dirty = nil, nil, false
	}
	r.mu.Lock()
	r.unrecorded++
	r.mu.Unlock()
	return sqlstore.NewLogBatch(chunk, p)
}

// storeIdlePosition stores the position read when it moved past other tables' changes, at
// most every positionEvery, while no batch is being recorded (which stores it too).
func (r *reader) storeIdlePosition(ctx context.Context) error {
	if !r.dirty {
		return nil
	}
	r.mu.Lock()
	due := r.unrecorded == 0 && time.Since(r.storedAt) >= positionEvery
	r.mu.Unlock()
	if !due {
		return nil
	}
	p := r.read.clone()
	if err := r.savePosition(ctx, r.s.DB(), p); err != nil {
		return fmt.Errorf("outbox: store the log position of %s: %w", r.s.Table(), err)
	}
	r.mu.Lock()
	r.flushed, r.storedAt = p, time.Now()
	r.mu.Unlock()
	r.queued, r.dirty = p, false
	return nil
}

// Record implements [store.LogStream]: the batches' outcome and the position after the last
// are stored in one transaction.
func (r *reader) Record(ctx context.Context, bs []*store.LogBatch) error {
	if len(bs) == 0 {
		return nil
	}
	p := sqlstore.ReadOf(bs[len(bs)-1]).Position.(position)
	err := r.s.RecordLog(ctx, bs, r.o.DeleteDelivered, func(ctx context.Context, tx *sql.Tx) error {
		if hook := recordHook.Load(); hook != nil {
			(*hook)(r.schema)
		}
		return r.savePosition(ctx, tx, p)
	})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.flushed, r.storedAt = p, time.Now()
	r.unrecorded -= len(bs)
	r.mu.Unlock()
	return nil
}

// recordHook, set by tests, runs in the transaction that records a batch, with the outbox
// table's database.
var recordHook atomic.Pointer[func(schema string)]

// done is the position up to which every message read is recorded.
func (r *reader) done() position {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.batch) == 0 && r.unrecorded == 0 {
		return r.read
	}
	return r.flushed
}

// stopped says what an error that ends reading means: a position the binlog no longer holds
// is deleted when the reader closes, unless recovering it is left to an operator.
func (r *reader) stopped(err error) error {
	var lost *lostPositionError
	if errors.As(err, &lost) && r.s.RecoversLostLog() {
		r.lost = lost
		return restartMessage(lost)
	}
	return err
}
