package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// openLog opens the store's change log: logical replication through the pgoutput plugin
// from the table's publication and slot. One reader per outbox holds an advisory lock; the
// slot itself admits one consumer too.
func openLog(ctx context.Context, s *sqlstore.Store, o store.LogOptions) (store.LogStream, error) {
	lockConn, err := s.DB().Conn(ctx)
	if err != nil {
		return nil, err
	}
	if err := waitForLead(ctx, s, lockConn, o); err != nil {
		lockConn.Close()
		return nil, err
	}
	r := &reader{s: s, o: o, lockConn: lockConn}
	if err := r.open(ctx); err != nil {
		unlock(ctx, s, lockConn)
		lockConn.Close()
		return nil, err
	}
	return r, nil
}

// reader is an open change log. A receiver goroutine owns the replication connection: it
// queues the transactions read, and confirms positions; a sampler goroutine reads how far
// behind the server the reader is. Next takes the queued transactions in batches; Record
// moves the confirmed position past them.
type reader struct {
	s         *sqlstore.Store
	o         store.LogOptions
	lockConn  *sql.Conn
	slot, pub string
	relID     uint32
	loss      slotLoss // what check found of a slot that cannot be read

	conn   *pgconn.PgConn
	txns   chan txn
	cancel context.CancelFunc // ends the goroutines
	done   sync.WaitGroup
	failed chan struct{} // closed with err when a goroutine fails
	err    error
	fail   sync.Once

	// streaming is set once the server sent something on the replication stream: only then
	// does the reader report that it reads, so that a stream the server refuses a moment
	// after it started never shows as read.
	streaming atomic.Bool

	mu        sync.Mutex
	confirmed pglogrepl.LSN // every message before it is recorded
	inFlight  int           // transactions handed out by Next and not yet recorded
	// confirmNow asks the receiver to confirm at once, and interrupt ends its wait for the
	// stream: a recorded batch is confirmed within moments, so that a crash sends little
	// again, and nothing at all of log-only messages, which have no row to tell by.
	confirmNow bool
	interrupt  func()

	// queued counts the messages queued for Next and not yet taken into a batch; the
	// receiver reads ahead while it is below two batches, which bounds memory whatever the
	// backlog. taken wakes the receiver when Next takes some.
	queued atomic.Int64
	taken  chan struct{}
	carry  *txn // taken from the queue, and first in the next batch
}

// txn is the outbox messages of one committed transaction.
// A transaction larger than a batch is handed over in parts of at most a batch; only its
// last part carries end, which is confirmed once every part is recorded.
type txn struct {
	msgs []sqlstore.LogMessage
	end  pglogrepl.LSN // the commit's end; 0 for a part that is not the last
}

// open checks the slot, making a new one in place of a lost one unless that is left to the
// operator, and starts streaming from it.
func (r *reader) open(ctx context.Context) error {
	var err error
	r.slot, r.pub, err = Names(ctx, r.lockConn, r.s.QualifiedName())
	if err != nil {
		return err
	}
	if err := r.check(ctx); err != nil {
		if r.loss == slotFine || !r.s.RecoversLostLog() {
			return err
		}
		if err := r.recover(ctx); err != nil {
			return err
		}
	}
	r.s.LogFound()
	if r.conn, err = r.connect(ctx); err != nil {
		return err
	}
	// The goroutines outlive OpenLog's context: Close ends them.
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.txns = make(chan txn, 64)
	r.taken = make(chan struct{}, 1)
	r.failed = make(chan struct{})
	r.done.Add(2)
	go func() {
		defer r.done.Done()
		r.stop(r.receive(gctx, r.conn, r.txns))
	}()
	go func() {
		defer r.done.Done()
		r.stop(r.sampleEvery(gctx))
	}()
	return nil
}

// stop ends reading after a goroutine stopped with err: Next returns it from then on.
func (r *reader) stop(err error) {
	r.fail.Do(func() {
		if err == nil || errors.Is(err, context.Canceled) {
			err = errors.New("outbox: the change log reader was closed")
		}
		r.err = err
		close(r.failed)
		r.cancel()
	})
}

// Filter implements [store.LogStream].
func (r *reader) Filter(ctx context.Context, b *store.LogBatch) error {
	return r.s.FilterLog(ctx, b, nil, r.o.DeleteDelivered)
}

// Record implements [store.LogStream]: it records the batches' outcome, then confirms the
// end of the transactions they complete.
func (r *reader) Record(ctx context.Context, bs []*store.LogBatch) error {
	if err := r.s.RecordLog(ctx, bs, r.o.DeleteDelivered, nil); err != nil {
		return err
	}
	var (
		whole int
		end   pglogrepl.LSN
	)
	for _, b := range bs {
		at := sqlstore.ReadOf(b).Position.(position)
		whole += at.whole
		end = max(end, at.end)
	}
	r.confirmRecorded(whole, end)
	return nil
}

// Close implements [store.LogStream]: it stops the goroutines, closes the replication
// connection and releases the log lock to a standby.
func (r *reader) Close() error {
	r.stop(nil)
	r.done.Wait()
	ctx := context.Background()
	r.conn.Close(ctx)
	unlock(ctx, r.s, r.lockConn)
	return r.lockConn.Close()
}
