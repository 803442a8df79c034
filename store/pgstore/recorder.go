package pgstore

import (
	"context"
	"sync"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// recorder records published batches in order on its own goroutine.
type recorder struct {
	r         *reader
	queue     chan recordJob
	failed    chan error // receives the first recording error
	pending   sync.WaitGroup
	holdsKeys bool // a batch queued since the last wait holds keys
	done      chan struct{}
}

// recordJob is a published batch to record: how many transactions it completes, and where
// the last of them ends.
type recordJob struct {
	b    *sqlstore.LogBatch
	txns int
	end  pglogrepl.LSN
}

func newRecorder(r *reader) *recorder {
	// One batch is published while another records: a crash sends at most those two again.
	rec := &recorder{r: r, queue: make(chan recordJob), failed: make(chan error, 1), done: make(chan struct{})}
	go rec.run()
	return rec
}

// add queues a published batch of txns transactions ending at end.
func (rec *recorder) add(b *sqlstore.LogBatch, txns int, end pglogrepl.LSN) {
	rec.holdsKeys = rec.holdsKeys || b.HoldsKeys()
	rec.pending.Add(1)
	rec.queue <- recordJob{b: b, txns: txns, end: end}
}

// wait waits until every queued batch is recorded.
func (rec *recorder) wait() error {
	rec.pending.Wait()
	rec.holdsKeys = false
	select {
	case err := <-rec.failed:
		rec.failed <- err
		return err
	default:
		return nil
	}
}

// close records what is queued and stops the recorder.
func (rec *recorder) close() error {
	close(rec.queue)
	<-rec.done
	select {
	case err := <-rec.failed:
		return err
	default:
		return nil
	}
}

// run records the queued batches in order, each with those queued behind it, until the queue
// is closed. After a failure it records nothing more, and only counts the batches off.
func (rec *recorder) run() {
	defer close(rec.done)
	var failed bool
	for job := range rec.queue {
		merged, jobs := rec.mergeQueued(job)
		if !failed {
			// Recording outlives the reader's context: the broker has these messages.
			if err := merged.b.Record(context.Background(), nil); err != nil {
				failed = true
				rec.failed <- err
			} else {
				rec.r.confirmRecorded(merged.txns, merged.end)
			}
		}
		for range jobs {
			rec.pending.Done()
		}
	}
}

// mergeQueued merges the jobs already queued behind job into it, so that they are recorded in
// one transaction, and says how many jobs it holds.
func (rec *recorder) mergeQueued(job recordJob) (recordJob, int) {
	jobs := 1
	for {
		select {
		case next, ok := <-rec.queue:
			if !ok {
				return job, jobs
			}
			job.b.Merge(next.b)
			job.txns += next.txns
			job.end = next.end
			jobs++
		default:
			return job, jobs
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
