package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// deliver takes committed transactions in order and hands them to the consumer in batches.
// A recorder goroutine records the published batches in order, merging those that queue up
// into one transaction, and moves the confirmed position past each; publishing goes on
// meanwhile, except behind a batch that holds keys, whose recording the next batch awaits.
// deliver also samples the server's WAL end, to report when the reader caught up and how far
// behind it is.
func (r *reader) deliver(ctx context.Context, txns <-chan txn) (err error) {
	rec := newRecorder(r)
	defer func() {
		// What was published is recorded even when reading stops: the broker has it.
		if rerr := rec.close(); err == nil || errors.Is(err, context.Canceled) {
			err = cmpErr(rerr, err)
		}
	}()
	prog := progress{lag: -1}
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		if t := r.carry; t != nil && ctx.Err() == nil {
			r.carry = nil
			if err := r.publishBatch(ctx, rec, *t, txns); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-rec.failed:
			return err
		case <-tick.C:
			if err := r.report(ctx, &prog); err != nil {
				return err
			}
		case t := <-txns:
			if err := r.publishBatch(ctx, rec, t, txns); err != nil {
				return err
			}
		}
	}
}

// publishBatch publishes first and what else is at hand, up to a batch, and queues the
// outcome for recording with the transactions it completes.
func (r *reader) publishBatch(ctx context.Context, rec *recorder, first txn, txns <-chan txn) error {
	batch := []txn{first}
	n := len(first.msgs)
more:
	for n < r.c.Batch() {
		select {
		case t := <-txns:
			if n+len(t.msgs) > r.c.Batch() {
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
	var (
		whole int           // transactions this batch completes
		end   pglogrepl.LSN // the last one's end
	)
	for _, t := range batch {
		msgs = append(msgs, t.msgs...)
		if t.end != 0 {
			whole, end = whole+1, t.end
		}
	}
	if rec.holdsKeys {
		if err := rec.wait(); err != nil {
			return err
		}
	}
	published, err := r.s.PublishLog(ctx, r.c, msgs, nil)
	if err != nil {
		return err
	}
	rec.add(published, whole, end)
	return nil
}

// cmpErr returns the first non-nil error.
func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
