package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// readLog is the store's change log reader: logical replication through the pgoutput plugin
// from the table's publication and slot. One reader per outbox holds an advisory lock; the
// slot itself admits one consumer too.
func readLog(ctx context.Context, s *sqlstore.Store, c store.LogConsumer) error {
	lockConn, err := s.DB().Conn(ctx)
	if err != nil {
		return err
	}
	defer lockConn.Close()
	if err := waitForLead(ctx, s, lockConn, c); err != nil {
		return err
	}
	defer unlock(ctx, s, lockConn)
	r := &reader{s: s, c: c, lockConn: lockConn}
	r.slot, r.pub, err = Names(ctx, lockConn, s.QualifiedName())
	if err != nil {
		return err
	}
	if err := r.check(ctx); err != nil {
		if r.loss == slotFine || !s.RecoversLostLog() {
			return err
		}
		if err := r.recover(ctx); err != nil {
			return err
		}
	}
	s.LogFound()
	return r.run(ctx)
}

// reader is one run of the log reader. A receiver goroutine owns the replication connection:
// it queues the transactions read, and confirms positions. The goroutine that called ReadLog
// publishes them in batches, and a recorder goroutine records the outcomes.
type reader struct {
	s         *sqlstore.Store
	c         store.LogConsumer
	lockConn  *sql.Conn
	slot, pub string
	relID     uint32
	loss      slotLoss // what check found of a slot that cannot be read

	// streaming is set once the server sent something on the replication stream: only then
	// does the reader report that it reads, so that a stream the server refuses a moment
	// after it started never shows as read.
	streaming atomic.Bool

	mu        sync.Mutex
	confirmed pglogrepl.LSN // every message before it is recorded
	inFlight  int           // transactions handed to the deliverer and not yet recorded
	// confirmNow asks the receiver to confirm at once, and interrupt ends its wait for the
	// stream: a recorded batch is confirmed within moments, so that a crash sends little
	// again, and nothing at all of log-only messages, which have no row to tell by.
	confirmNow bool
	interrupt  context.CancelFunc

	// queued counts the messages handed to the deliverer and not yet taken into a batch;
	// the receiver reads ahead while it is below two batches, which bounds memory whatever
	// the backlog. taken wakes the receiver when the deliverer takes some.
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

// run streams from the slot until ctx ends or the connection fails. One goroutine owns the
// replication connection (receiving, and confirming positions); this one delivers.
func (r *reader) run(ctx context.Context) error {
	conn, err := r.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	txns := make(chan txn, 64)
	r.taken = make(chan struct{}, 1)
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- r.receive(ctx, conn, txns)
		cancel()
	}()
	err = r.deliver(ctx, txns)
	cancel()
	if rerr := <-recvErr; err == nil || errors.Is(err, context.Canceled) {
		err = rerr
	}
	return err
}
