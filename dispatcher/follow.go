package dispatcher

import (
	"cmp"
	"context"
	"sync"

	"github.com/outboxgo/outbox/store"
)

// follow reads an open change log until reading stops or fails, a batch at a time: read it,
// filter it, publish it, record it. While a batch is published, the next one is read and,
// unless a batch not yet recorded holds keys back, filtered: a filter must see the record of
// every batch that holds keys. A batch is recorded while the next one is published, except
// after a batch that holds keys back: so a crash publishes at most two batches again.
// Publishing ends only with pubCtx, the run's context, not when reading stops: a graceful
// stop finishes the batch in hand, and records it.
func (d *Dispatcher) follow(ctx, pubCtx context.Context, stream store.LogStream) (err error) {
	rec := newRecorder(stream)
	defer func() {
		if rerr := rec.close(); err == nil || ctx.Err() != nil {
			err = cmp.Or(rerr, err)
		}
	}()
	var next *readAhead
	defer func() {
		if next != nil {
			next.stop()
		}
	}()
	for {
		var (
			b        *store.LogBatch
			filtered bool
		)
		if next != nil {
			b, filtered, err = next.result()
			next = nil
		} else {
			b, err = stream.Next(ctx)
		}
		if err != nil {
			return err
		}
		if !filtered {
			if rec.holdsKeys {
				if err := rec.wait(); err != nil {
					return err
				}
			}
			if err := stream.Filter(ctx, b); err != nil {
				return err
			}
		}
		if len(b.Publish) > 0 {
			next = readNext(ctx, stream, !rec.holdsKeys && !b.HeldBack)
			out := d.deliver(pubCtx, b.Publish)
			d.logs.logPublished.Add(int64(len(out.delivered)))
			d.followUp(out)
			b.Outcome = store.LogOutcome{Delivered: out.delivered, Failures: out.failures, Unattempted: out.unattempted}
			if b.HoldsKeys() {
				next.refilter = true // filtered before this batch's failures were recorded
			}
		}
		if err := rec.add(b); err != nil {
			return err
		}
	}
}

// readAhead reads the next batch of a stream, and filters it, while the dispatcher publishes
// the batch before it.
type readAhead struct {
	done     chan struct{}
	cancel   context.CancelFunc
	b        *store.LogBatch
	filtered bool
	err      error
	refilter bool // set by the reader: the batch is to be filtered again
}

// readNext starts reading the next batch of stream, filtering it too when filter is set.
func readNext(ctx context.Context, stream store.LogStream, filter bool) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	a := &readAhead{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(a.done)
		if a.b, a.err = stream.Next(ctx); a.err == nil && filter {
			a.err, a.filtered = stream.Filter(ctx, a.b), true
		}
	}()
	return a
}

// result waits for the batch, and says whether it was filtered for good.
func (a *readAhead) result() (*store.LogBatch, bool, error) {
	<-a.done
	a.cancel()
	return a.b, a.filtered && !a.refilter, a.err
}

// stop ends the reading and waits for it.
func (a *readAhead) stop() {
	a.cancel()
	<-a.done
}

// recorder records published batches in order on its own goroutine, merging those that
// queue up behind one being recorded into one transaction.
type recorder struct {
	stream    store.LogStream
	queue     chan *store.LogBatch
	pending   sync.WaitGroup
	holdsKeys bool // a batch queued since the last wait holds keys
	done      chan struct{}
	failed    chan struct{} // closed, with failure set, when recording fails
	failure   error
}

func newRecorder(stream store.LogStream) *recorder {
	// Unbuffered: one batch is published while another records.
	rec := &recorder{stream: stream, queue: make(chan *store.LogBatch), done: make(chan struct{}), failed: make(chan struct{})}
	go rec.run()
	return rec
}

// add queues a published batch, or returns the error that stopped recording.
func (rec *recorder) add(b *store.LogBatch) error {
	rec.holdsKeys = rec.holdsKeys || b.HoldsKeys()
	rec.pending.Add(1)
	select {
	case rec.queue <- b:
		return nil
	case <-rec.failed:
		rec.pending.Done()
		return rec.failure
	}
}

// wait waits until every queued batch is recorded.
func (rec *recorder) wait() error {
	rec.pending.Wait()
	rec.holdsKeys = false
	return rec.err()
}

// err is the error that stopped recording, if any.
func (rec *recorder) err() error {
	select {
	case <-rec.failed:
		return rec.failure
	default:
		return nil
	}
}

// close records what is queued and stops the recorder.
func (rec *recorder) close() error {
	close(rec.queue)
	<-rec.done
	return rec.err()
}

// run records the queued batches in order, each with those queued behind it, until the queue
// is closed. After a failure it records nothing more, and only counts the batches off.
func (rec *recorder) run() {
	defer close(rec.done)
	for b := range rec.queue {
		bs := rec.queued(b)
		if rec.err() == nil {
			// Recording outlives the reading: the broker has these messages.
			if err := rec.stream.Record(context.Background(), bs); err != nil {
				rec.failure = err
				close(rec.failed)
			}
		}
		for range bs {
			rec.pending.Done()
		}
	}
}

// queued is b and the batches already queued behind it.
func (rec *recorder) queued(b *store.LogBatch) []*store.LogBatch {
	bs := []*store.LogBatch{b}
	for {
		select {
		case next, ok := <-rec.queue:
			if !ok {
				return bs
			}
			bs = append(bs, next)
		default:
			return bs
		}
	}
}
