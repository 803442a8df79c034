package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// position is where a batch leaves the reader once recorded: how many transactions it
// completes, and where the last of them ends.
type position struct {
	whole int
	end   pglogrepl.LSN
}

// Next implements [store.LogStream]: it waits for a committed transaction and returns it with
// those queued behind it, up to a batch.
func (r *reader) Next(ctx context.Context) (*store.LogBatch, error) {
	first := r.carry
	r.carry = nil
	if first == nil {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.failed:
			return nil, r.err
		case t := <-r.txns:
			first = &t
		}
	}
	batch := []txn{*first}
	n := len(first.msgs)
more:
	for n < r.o.Batch() {
		select {
		case t := <-r.txns:
			if n+len(t.msgs) > r.o.Batch() {
				r.carry = &t // the next batch starts with it, and counts it as taken
				break more
			}
			batch = append(batch, t)
			n += len(t.msgs)
		default:
			break more
		}
	}
	r.queued.Add(-int64(n))
	select {
	case r.taken <- struct{}{}:
	default:
	}
	msgs := make([]sqlstore.LogMessage, 0, n)
	var at position
	for _, t := range batch {
		msgs = append(msgs, t.msgs...)
		if t.end != 0 {
			at.whole, at.end = at.whole+1, t.end
		}
	}
	return sqlstore.NewLogBatch(msgs, at), nil
}

// sampleEvery samples the server's WAL end every sampleEvery until ctx ends, to report when
// the reader caught up and how far behind it is.
func (r *reader) sampleEvery(ctx context.Context) error {
	prog := progress{lag: -1}
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if err := r.report(ctx, &prog); err != nil {
				return err
			}
		}
	}
}

// confirmRecorded counts txns transactions as recorded and moves the confirmed position to
// end, waking the receiver to confirm it at once.
func (r *reader) confirmRecorded(txns int, end pglogrepl.LSN) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight -= txns
	if end > r.confirmed {
		r.confirmed = end
		r.confirmNow = true
		if r.interrupt != nil {
			r.interrupt()
		}
	}
}
