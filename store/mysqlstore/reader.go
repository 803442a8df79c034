package mysqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// openLog opens the store's change log: it streams the binlog as a replica would, from the
// position stored with the last batch, while it holds the outbox's log lock.
func openLog(ctx context.Context, s *sqlstore.Store, o store.LogOptions, conn *mysql.Config) (store.LogStream, error) {
	if conn == nil {
		return nil, store.LogUnavailable("the binlog connection needs the database handle's connection settings: open the database with mysqlstore.Open")
	}
	switch conn.Net {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, store.LogUnavailable("the binlog connection dials tcp or unix sockets only, not %q", conn.Net)
	}
	lockConn, err := s.DB().Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: log reader: %w", err)
	}
	r := &reader{s: s, o: o, conn: conn, lockConn: lockConn, log: s.Logger().With(slog.String("component", "outbox.binlog")), lag: -1}
	if err := r.identify(ctx); err != nil {
		lockConn.Close()
		return nil, err
	}
	if err := r.waitForLead(ctx); err != nil {
		lockConn.Close()
		return nil, err
	}
	if err := r.open(ctx); err != nil {
		r.release(ctx)
		if lost := (*lostPositionError)(nil); errors.As(err, &lost) && s.RecoversLostLog() {
			err = r.forgetPosition(ctx, lost)
		}
		r.unlock(ctx)
		lockConn.Close()
		return nil, err
	}
	return r, nil
}

// open checks the server, and starts streaming from the stored position.
func (r *reader) open(ctx context.Context) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	start, err := r.startPosition(ctx)
	if err != nil {
		return err
	}
	// A standby holds no second connection: the lookup session is the leader's.
	if r.lookup, err = lookupConn(ctx, r.s.DB()); err != nil {
		return err
	}
	cfg, err := r.syncerConfig()
	if err != nil {
		return err
	}
	r.syncer = replication.NewBinlogSyncer(cfg)
	streamer, err := r.startStream(r.syncer, start)
	if err != nil {
		return err
	}
	// The goroutine outlives OpenLog's context: Close ends it.
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.src = eventSource{
		events: make(chan *replication.BinlogEvent, 16),
		errs:   make(chan error, 1),
		tick:   time.NewTicker(sampleEvery / 2),
		idle:   time.NewTimer(idleWait),
		cancel: cancel,
	}
	r.forwarding.Go(func() { forwardEvents(fctx, streamer, r.src.events, r.src.errs) })
	r.startAt(start)
	return nil
}

// Close implements [store.LogStream]: it ends the stream, deletes a lost position (see
// forgetPosition) and releases the log lock to a standby.
func (r *reader) Close() error {
	ctx := context.Background()
	r.release(ctx)
	if r.lost != nil {
		if err := r.forgetPosition(ctx, r.lost); err != nil && errors.Is(err, r.lost) {
			r.log.Error("cannot delete the lost binlog position", slog.Any("error", err))
		}
	}
	r.unlock(ctx)
	return r.lockConn.Close()
}

// release stops streaming and closes the lookup session.
func (r *reader) release(context.Context) {
	if r.src.cancel != nil {
		r.src.cancel()
		r.forwarding.Wait()
		r.src.tick.Stop()
		r.src.idle.Stop()
	}
	if r.syncer != nil {
		r.syncer.Close()
	}
	if r.lookup != nil {
		// Its session setting must not reach the pool.
		r.lookup.Raw(func(any) error { return driver.ErrBadConn })
		r.lookup.Close()
	}
}

// reader is an open binlog. Next and Filter run on the dispatcher's reading goroutine, Record
// on its recording one (they share what mu guards), and decodeRows on go-mysql's, where it
// reads only what identify set.
type reader struct {
	s        *sqlstore.Store
	o        store.LogOptions
	conn     *mysql.Config
	lockConn *sql.Conn
	lookup   *sql.Conn // in READ COMMITTED: where logged rows are looked up (see lookupConn)
	log      *slog.Logger

	mariadb  bool
	schema   string // the outbox table's database
	fold     bool   // table names compare without case (lower_case_table_names)
	lockName string
	posTable string // quoted name of the position table
	cols     columnCache
	warned   uint64 // table id whose rows could not be mapped, logged once

	syncer     *replication.BinlogSyncer
	src        eventSource
	forwarding sync.WaitGroup
	lost       *lostPositionError // a position the binlog no longer holds, deleted by Close

	curFile string // position after the last event
	curPos  uint32
	read    position // after the last transaction read

	mu         sync.Mutex
	flushed    position // after the last transaction whose messages are recorded
	unrecorded int      // batches handed out by Next and not yet recorded
	storedAt   time.Time

	inTx    bool
	txGTID  gtid
	txDom   uint32
	hasGTID bool
	txMsgs  []sqlstore.LogMessage
	txOther bool // the transaction changed something besides the outbox's own tables

	batch    []sqlstore.LogMessage
	batchTxs []batchTx // the transactions of the batch, in order
	queued   position  // stored with the last batch handed over: where batch is read again
	batchAt  time.Time
	dirty    bool      // read moved past changes of other tables since the position was stored
	heard    time.Time // last event, or the last call of Next

	samples   []sample
	sampledAt time.Time
	last      sample // the last sample
	caughtUp  time.Time
	lag       int64

	// streaming is set once the server sent the first event: only then does the reader
	// report that it reads, so that a stream the server refuses a moment after it started
	// (a purged position) never shows as read.
	streaming bool
}

// identify finds the outbox table's database, the server's flavour, and the lock name.
func (r *reader) identify(ctx context.Context) error {
	var (
		db      sql.NullString
		version string
		lower   int
	)
	if err := r.lockConn.QueryRowContext(ctx, "SELECT DATABASE(), VERSION(), @@lower_case_table_names").Scan(&db, &version, &lower); err != nil {
		return fmt.Errorf("outbox: log reader: %w", err)
	}
	r.mariadb = isMariaDB(version)
	r.fold = lower != 0
	r.schema = r.s.Schema()
	if r.schema == "" {
		r.schema = db.String
	}
	if r.schema == "" {
		return store.LogUnavailable("the DSN names no database and the table %s is not qualified", r.s.Table())
	}
	r.posTable = positionTable(r.schema, r.s.TableName())
	r.lockName = lockName(r.schema, r.s.TableName(), r.fold)
	r.cols.lookup = r.lookupColumns
	return nil
}

func (r *reader) status(st store.LogStatus) {
	if r.o.Status != nil {
		r.o.Status(st)
	}
}

// querier is a *sql.Conn, *sql.DB or *sql.Tx.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// idleWait is how long the reader waits for more events before it takes the stream for
// idle and hands over a batch that is not full.
const idleWait = 200 * time.Microsecond

// Next implements [store.LogStream]: it follows the binlog until a batch is due (see take).
func (r *reader) Next(ctx context.Context) (*store.LogBatch, error) {
	r.heard = time.Now() // the time since the last call was the dispatcher's, not the server's
	idle := false
	for {
		b, err := r.take(ctx, idle)
		if b != nil || err != nil {
			return b, r.stopped(err)
		}
		var e *replication.BinlogEvent
		if e, idle, err = r.next(ctx); err != nil {
			return nil, r.stopped(err)
		}
		if e == nil {
			continue
		}
		r.heard = time.Now()
		if !r.streaming {
			r.streaming = true
			r.status(store.LogStatus{Reading: true, LagBytes: -1})
		}
		if err := r.handle(ctx, e, false); err != nil {
			return nil, r.stopped(err)
		}
	}
}

// Filter implements [store.LogStream]; rows are looked up on the lookup session.
func (r *reader) Filter(ctx context.Context, b *store.LogBatch) error {
	return r.s.FilterLog(ctx, b, r.lookup, r.o.DeleteDelivered)
}

// eventSource is what the reader waits on: the stream's events and its error, the tick
// that samples the lag, and the timer that tells the stream is idle.
type eventSource struct {
	events chan *replication.BinlogEvent
	errs   chan error
	tick   *time.Ticker
	idle   *time.Timer
	cancel context.CancelFunc // ends forwardEvents
}

// forwardEvents hands the streamer's events over until ctx ends or the stream fails. go-mysql
// reads ahead into its own buffer; a channel of its events lets the reader tell when nothing
// more is at hand.
func forwardEvents(ctx context.Context, streamer *replication.BinlogStreamer, events chan<- *replication.BinlogEvent, errs chan<- error) {
	for {
		e, err := streamer.GetEvent(ctx)
		if err != nil {
			if ctx.Err() == nil {
				errs <- err
			}
			return
		}
		select {
		case events <- e:
		case <-ctx.Done():
			return
		}
	}
}

// startAt sets the reader at start, the stored position, as reading begins.
func (r *reader) startAt(start position) {
	now := time.Now()
	r.read, r.flushed, r.queued = start.clone(), start.clone(), start.clone()
	if r.read.gtids == nil {
		r.read.gtids = map[uint32]gtid{}
	}
	r.curFile, r.curPos = start.file, start.pos
	r.storedAt, r.heard = now, now
}

// next returns the next event, or nil and whether the stream is idle: nothing more at hand
// a moment after the batch's last message, or a tick.
func (r *reader) next(ctx context.Context) (*replication.BinlogEvent, bool, error) {
	src := r.src
	select {
	case e := <-src.events:
		return e, false, nil
	case err := <-src.errs:
		return nil, false, r.streamError(err)
	case <-src.tick.C:
		return nil, true, r.tick(ctx)
	case <-ctx.Done():
		return nil, false, ctx.Err()
	default:
	}
	// Nothing more at hand: hand over what the committed transactions hold. The stream may
	// only be a moment behind (a busy machine): give it that moment.
	if len(r.batch) > 0 {
		src.idle.Reset(idleWait)
		select {
		case e := <-src.events:
			return e, false, nil
		case <-src.idle.C:
			return nil, true, nil
		}
	}
	select {
	case e := <-src.events:
		return e, false, nil
	case err := <-src.errs:
		return nil, false, r.streamError(err)
	case <-src.tick.C:
		return nil, true, r.tick(ctx)
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// lookupConn is a session for looking logged rows up. The server sends a transaction once it
// is in the binlog, which is before the storage engine commits it: until then a query does
// not see its rows, and the reader would take them for messages that polling delivered
// already. A locking read waits for the transaction that wrote a row to commit; in READ
// COMMITTED it takes no gap locks, which would hold up writers.
func lookupConn(ctx context.Context, db *sql.DB) (*sql.Conn, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: log reader: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"); err != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
		return nil, fmt.Errorf("outbox: log reader: %w", err)
	}
	return conn, nil
}
