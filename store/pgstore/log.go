package pgstore

import (
	"context"
	"database/sql"
	binary_ "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlstore"
)

// Names returns the replication slot and the publication through which the log reader of
// the outbox table reads it: the table's schema and name joined by an underscore, in lower
// case ("outbox" for the default table, "app_outbox" for "app.outbox"), or "outbox_" and a
// hash when that is no valid slot name.
func Names(table string) (slot, publication string) {
	if table == "" {
		table = sqlstore.DefaultTable
	}
	base := strings.ReplaceAll(table, ".", "_")
	if !slotNameRE.MatchString(base) {
		sum := uint64(14695981039346656037)
		for _, c := range []byte(table) {
			sum = (sum ^ uint64(c)) * 1099511628211
		}
		base = "outbox_" + strconv.FormatUint(sum, 16)
	}
	return base, base
}

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// statusEvery is how often the reader confirms its position to the server when no recorded
// batch made it confirm sooner.
const statusEvery = time.Second

// sampleEvery is how often the reader samples the server's WAL end, which tells when it has
// caught up and how far behind it is.
const sampleEvery = 2 * time.Second

// setUpLog creates the publication and the replication slot after the schema steps of
// Migrate. The slot is created only here: creating one waits for every open write
// transaction on the server. Without wal_level = logical, or without the rights, it logs why
// and leaves the dispatchers polling.
func setUpLog(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) error {
	slot, pub := Names(s.QualifiedName())
	var exists bool
	if err := conn.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", pub).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		_, err := conn.ExecContext(ctx, "CREATE PUBLICATION "+pgx.Identifier{pub}.Sanitize()+" FOR TABLE "+s.Table()+" WITH (publish = 'insert')")
		if isPermission(err) {
			s.Logger().Warn("cannot create the publication for the log reader; dispatchers will poll", "publication", pub, "error", err)
			return nil
		}
		if err != nil {
			return fmt.Errorf("create publication %s: %w", pub, err)
		}
	}
	var (
		walLevel, currentDB string
		slotDB              sql.NullString // NULL without a slot
	)
	if err := conn.QueryRowContext(ctx, `SELECT current_setting('wal_level'), current_database(),
		(SELECT database FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&walLevel, &currentDB, &slotDB); err != nil {
		return err
	}
	if slotDB.Valid && slotDB.String != currentDB {
		s.Logger().Warn(slotElsewhere(slot, slotDB.String)+"; dispatchers will poll", "slot", slot)
	}
	if slotDB.Valid {
		return nil
	}
	if walLevel != "logical" {
		s.Logger().Info("wal_level is not logical: no replication slot created; dispatchers will poll (set wal_level = logical, restart Postgres and migrate again to read the log)",
			"wal_level", walLevel)
		return nil
	}
	_, err := conn.ExecContext(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	if isPermission(err) {
		s.Logger().Warn("cannot create the replication slot for the log reader (the user needs the REPLICATION attribute); dispatchers will poll", "slot", slot, "error", err)
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile by another database's migrate
		return nil
	}
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return nil
}

// slotElsewhere says that the slot an outbox needs belongs to another database.
func slotElsewhere(slot, database string) string {
	return fmt.Sprintf("replication slot %s belongs to database %s: slot names are server-wide, so outboxes in two databases of one server need different table or schema names", slot, database)
}

func isPermission(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

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
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := lockConn.ExecContext(uctx, "SELECT pg_advisory_unlock($1)", s.LockKey("log")); err != nil {
			lockConn.Raw(func(any) error { return errBadConn })
		}
	}()
	r := &reader{s: s, c: c, lockConn: lockConn}
	r.slot, r.pub = Names(s.QualifiedName())
	if err := r.check(ctx); err != nil {
		return err
	}
	return r.run(ctx)
}

var errBadConn = errors.New("outbox: discard connection")

// waitForLead takes the outbox's log lock on conn, waiting as a standby while another
// instance holds it.
func waitForLead(ctx context.Context, s *sqlstore.Store, conn *sql.Conn, c store.LogConsumer) error {
	reported := false
	for {
		var got bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", s.LockKey("log")).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // the driver reports a query it cancelled as a bad connection
			}
			return fmt.Errorf("outbox: take the log reader's lock: %w", err)
		}
		if got {
			return nil
		}
		if !reported && c.Status != nil {
			c.Status(store.LogStatus{})
			reported = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

type reader struct {
	s         *sqlstore.Store
	c         store.LogConsumer
	lockConn  *sql.Conn
	slot, pub string
	relID     uint32

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

// check tells why the log cannot be read, as an error wrapping store.ErrLogUnavailable.
func (r *reader) check(ctx context.Context) error {
	var (
		walLevel, currentDB       string
		pubExists                 bool
		slotDB, plugin, walStatus sql.NullString // slotDB is NULL without a slot
		relID                     sql.NullInt64
	)
	err := r.lockConn.QueryRowContext(ctx, `SELECT current_setting('wal_level'), current_database(),
		EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2),
		s.database, s.plugin, s.wal_status, to_regclass($3)::oid::bigint
		FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, r.slot, r.pub, r.s.Table()).
		Scan(&walLevel, &currentDB, &pubExists, &slotDB, &plugin, &walStatus, &relID)
	if err != nil {
		return err
	}
	unavailable := store.LogUnavailable
	switch {
	case walLevel != "logical":
		return unavailable("wal_level is %s; set wal_level = logical and restart Postgres, then run Migrate to create the replication slot", walLevel)
	case slotDB.Valid && slotDB.String != currentDB:
		return unavailable("%s", slotElsewhere(r.slot, slotDB.String))
	case !relID.Valid:
		return unavailable("table %s does not exist; run Migrate", r.s.Table())
	case !pubExists:
		return unavailable("publication %s does not exist; run Migrate", r.pub)
	case !slotDB.Valid:
		return unavailable("replication slot %s does not exist; run Migrate to create it", r.slot)
	case plugin.String != "pgoutput":
		return unavailable("replication slot %s uses the %s plugin, not pgoutput", r.slot, plugin.String)
	case walStatus.String == "lost":
		return unavailable("replication slot %s lost WAL it needed (max_slot_wal_keep_size); drop it and run Migrate", r.slot)
	}
	r.relID = uint32(relID.Int64)
	return nil
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
	if r.c.Status != nil {
		r.c.Status(store.LogStatus{Reading: true, LagBytes: -1})
	}
	err = r.deliver(ctx, txns)
	cancel()
	if rerr := <-recvErr; err == nil || errors.Is(err, context.Canceled) {
		err = rerr
	}
	return err
}

// connect opens the replication connection with the database handle's settings and starts
// streaming from the slot's confirmed position.
func (r *reader) connect(ctx context.Context) (*pgconn.PgConn, error) {
	var cfg *pgconn.Config
	err := r.lockConn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("outbox: pgstore: connection is %T, not pgx's", dc)
		}
		cfg = c.Conn().Config().Config.Copy()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["replication"] = "database"
	// pgoutput sends values as their text output in the sender's session settings.
	cfg.RuntimeParams["DateStyle"] = "ISO, MDY"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		if isPermission(err) || strings.Contains(err.Error(), "replication") {
			return nil, fmt.Errorf("%w: cannot open a replication connection (the user needs the REPLICATION attribute, and pg_hba.conf must admit it): %w", store.ErrLogUnavailable, err)
		}
		return nil, fmt.Errorf("outbox: open replication connection: %w", err)
	}
	args := []string{"proto_version '1'", "publication_names '" + r.pub + "'"}
	major, _, _ := strings.Cut(conn.ParameterStatus("server_version"), ".")
	if v, _ := strconv.Atoi(major); v >= 14 {
		// Binary values cost less to produce and to read than text: a bytea payload is
		// sent as itself rather than as hex.
		args = append(args, "binary 'true'")
	}
	err = pglogrepl.StartReplication(ctx, conn, r.slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42704" { // undefined object: the slot went away
			return nil, fmt.Errorf("%w: replication slot %s: %w", store.ErrLogUnavailable, r.slot, err)
		}
		return nil, fmt.Errorf("outbox: start replication from slot %s: %w", r.slot, err)
	}
	return conn, nil
}

// receive reads the stream, hands each committed transaction with outbox messages to the
// deliverer in commit order, and confirms positions as batches are recorded, and at least
// every statusEvery. When nothing is in flight, the server's keepalive position is confirmed
// too, so that a quiet outbox does not pin WAL.
func (r *reader) receive(ctx context.Context, conn *pgconn.PgConn, txns chan<- txn) error {
	var (
		relations = map[uint32]*pglogrepl.RelationMessage{}
		cur       *txn
		inTxn     bool
		nextSend  time.Time
	)
	send := func() error {
		r.mu.Lock()
		pos := r.confirmed
		r.mu.Unlock()
		nextSend = time.Now().Add(statusEvery)
		if pos == 0 {
			return nil
		}
		// ReplyRequested: the server answers with a keepalive that carries its position.
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, ReplyRequested: true})
		if err != nil {
			return fmt.Errorf("outbox: confirm log position: %w", err)
		}
		return nil
	}
	for {
		r.mu.Lock()
		now := r.confirmNow
		r.confirmNow = false
		r.mu.Unlock()
		if now || !time.Now().Before(nextSend) {
			if err := send(); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(ctx, nextSend)
		r.mu.Lock()
		r.interrupt = cancel
		if r.confirmNow {
			cancel()
		}
		r.mu.Unlock()
		raw, err := conn.ReceiveMessage(rctx)
		r.mu.Lock()
		r.interrupt = nil
		r.mu.Unlock()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) || rctx.Err() != nil {
				continue // the connection survives a deadline: pgconn reads on where it stopped
			}
			return fmt.Errorf("outbox: read replication stream: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("outbox: replication stream: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("outbox: replication keepalive: %w", err)
				}
				if !inTxn {
					r.mu.Lock()
					if r.inFlight == 0 && ka.ServerWALEnd > r.confirmed {
						r.confirmed = ka.ServerWALEnd
					}
					r.mu.Unlock()
				}
				if ka.ReplyRequested {
					nextSend = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("outbox: replication data: %w", err)
				}
				msg, err := pglogrepl.Parse(xld.WALData)
				if err != nil {
					return fmt.Errorf("outbox: decode replication message: %w", err)
				}
				switch msg := msg.(type) {
				case *pglogrepl.RelationMessage:
					relations[msg.RelationID] = msg
				case *pglogrepl.BeginMessage:
					inTxn, cur = true, &txn{}
				case *pglogrepl.InsertMessage:
					if msg.RelationID != r.relID || cur == nil {
						continue
					}
					rel, ok := relations[msg.RelationID]
					if !ok {
						return fmt.Errorf("outbox: replication stream: insert into relation %d before its description", msg.RelationID)
					}
					lm, err := decodeRow(rel, msg.Tuple)
					if err != nil {
						// A row we cannot read is left to the sweep, which reads the table.
						r.s.Logger().Error("cannot decode a logged outbox row; the sweep will deliver it", "error", err)
						continue
					}
					cur.msgs = append(cur.msgs, lm)
				case *pglogrepl.CommitMessage:
					inTxn = false
					if cur == nil || len(cur.msgs) == 0 {
						r.mu.Lock()
						if r.inFlight == 0 && msg.TransactionEndLSN > r.confirmed {
							r.confirmed = msg.TransactionEndLSN
						}
						r.mu.Unlock()
						cur = nil
						continue
					}
					cur.end = msg.TransactionEndLSN
					r.mu.Lock()
					r.inFlight++
					r.mu.Unlock()
					for len(cur.msgs) > r.c.Batch() {
						part := txn{msgs: cur.msgs[:r.c.Batch():r.c.Batch()]}
						cur.msgs = cur.msgs[r.c.Batch():]
						if err := r.hand(ctx, conn, txns, part, send); err != nil {
							return err
						}
					}
					if err := r.hand(ctx, conn, txns, *cur, send); err != nil {
						return err
					}
					cur = nil
				}
			}
		}
	}
}

// hand passes t to the deliverer once fewer than two batches of messages wait for it,
// confirming positions meanwhile so that the server does not time the connection out
// (wal_sender_timeout) while the deliverer is slow (a broker outage).
func (r *reader) hand(ctx context.Context, conn *pgconn.PgConn, txns chan<- txn, t txn, send func() error) error {
	for {
		timer := time.NewTimer(statusEvery)
		in := txns
		if r.queued.Load() >= int64(2*r.c.Batch()) {
			in = nil // wait until the deliverer takes some
		}
		select {
		case in <- t:
			timer.Stop()
			r.queued.Add(int64(len(t.msgs)))
			return nil
		case <-r.taken:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			// Confirming without reading is enough: the server reads replies even while
			// it waits for room to send.
			if err := send(); err != nil {
				return err
			}
		}
	}
}

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
	var (
		samples  []walSample
		caughtUp time.Time
		lag      int64 = -1
	)
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
			s, slotLag, err := r.sample(ctx)
			if err != nil {
				return err
			}
			lag = slotLag
			samples = append(samples, s)
			r.mu.Lock()
			confirmed := r.confirmed
			r.mu.Unlock()
			for len(samples) > 0 && confirmed >= samples[0].lsn {
				caughtUp = samples[0].at
				samples = samples[1:]
			}
			if r.c.Status != nil {
				r.c.Status(store.LogStatus{Reading: true, CaughtUp: caughtUp, LagBytes: lag})
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

// recorder records published batches in order on its own goroutine.
type recorder struct {
	r         *reader
	queue     chan recordJob
	failed    chan error // receives the first recording error
	pending   sync.WaitGroup
	holdsKeys bool // a batch queued since the last wait holds keys
	done      chan struct{}
}

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

func (rec *recorder) run() {
	defer close(rec.done)
	var failed bool
	for job := range rec.queue {
		jobs := 1
	merge:
		for {
			select {
			case next, ok := <-rec.queue:
				if !ok {
					break merge
				}
				job.b.Merge(next.b)
				job.txns += next.txns
				job.end = next.end
				jobs++
			default:
				break merge
			}
		}
		if !failed {
			// Recording outlives the reader's context: the broker has these messages.
			if err := job.b.Record(context.Background(), nil); err != nil {
				failed = true
				rec.failed <- err
			} else {
				r := rec.r
				r.mu.Lock()
				r.inFlight -= job.txns
				if job.end > r.confirmed {
					r.confirmed = job.end
					r.confirmNow = true
					if r.interrupt != nil {
						r.interrupt()
					}
				}
				r.mu.Unlock()
			}
		}
		for range jobs {
			rec.pending.Done()
		}
	}
}

type walSample struct {
	at  time.Time
	lsn pglogrepl.LSN
}

// sample reads the server's WAL end now and the slot's lag behind it. A slot that is gone
// makes the log unavailable.
func (r *reader) sample(ctx context.Context) (walSample, int64, error) {
	at := time.Now()
	var (
		end string
		lag sql.NullInt64
	)
	// Not cancelled with ctx: cancelling a query closes the connection, and the lock it holds
	// would stay taken until the server notices, keeping the next reader waiting.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := r.lockConn.QueryRowContext(qctx, "SELECT pg_current_wal_lsn()::text, (SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1)", r.slot).Scan(&end, &lag)
	if err != nil {
		return walSample{}, 0, fmt.Errorf("outbox: sample WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(end)
	if err != nil {
		return walSample{}, 0, err
	}
	if !lag.Valid {
		return walSample{}, 0, fmt.Errorf("%w: replication slot %s was dropped", store.ErrLogUnavailable, r.slot)
	}
	return walSample{at: at, lsn: lsn}, lag.Int64, nil
}

// decodeRow turns an inserted outbox row into a message. Columns are found by name, and come
// in pgoutput's binary format (Postgres 14 and later) or its text format.
func decodeRow(rel *pglogrepl.RelationMessage, tuple *pglogrepl.TupleData) (sqlstore.LogMessage, error) {
	var m sqlstore.LogMessage
	if tuple == nil || len(tuple.Columns) != len(rel.Columns) {
		return m, errors.New("row does not match its relation")
	}
	var seen int
	for i, col := range rel.Columns {
		v := tuple.Columns[i]
		binary := v.DataType == pglogrepl.TupleDataTypeBinary
		if !binary && v.DataType != pglogrepl.TupleDataTypeText {
			continue // NULL, or an unchanged TOAST value, which an insert does not carry
		}
		var err error
		switch col.Name {
		case "seq":
			m.Seq, err = decodeInt8(v.Data, binary)
			seen |= 1
		case "id":
			m.ID = string(v.Data)
			seen |= 2
		case "topic":
			m.Topic = string(v.Data)
			seen |= 4
		case "message_key":
			m.Key = string(v.Data)
		case "payload":
			if binary {
				m.Payload = v.Data
			} else {
				m.Payload, err = decodeBytea(string(v.Data))
			}
			seen |= 8
		case "headers":
			m.Headers, err = store.DecodeHeaders(string(v.Data))
		case "created_at":
			m.CreatedAt, err = decodeTimestamptz(v.Data, binary)
			seen |= 16
		case "state":
			m.LogOnly = string(v.Data) == sqlstore.LogOnlyState
		}
		if err != nil {
			return m, fmt.Errorf("column %s: %w", col.Name, err)
		}
	}
	if seen != 31 {
		return m, fmt.Errorf("row lacks a column (seq, id, topic, payload, created_at): %b", seen)
	}
	return m, nil
}

func decodeInt8(data []byte, binary bool) (int64, error) {
	if !binary {
		return strconv.ParseInt(string(data), 10, 64)
	}
	if len(data) != 8 {
		return 0, fmt.Errorf("binary bigint of %d bytes", len(data))
	}
	return int64(binary_.BigEndian.Uint64(data)), nil
}

// pgEpoch is where Postgres counts binary timestamps from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func decodeTimestamptz(data []byte, binary bool) (time.Time, error) {
	if !binary {
		return time.Parse("2006-01-02 15:04:05.999999-07", string(data))
	}
	if len(data) != 8 {
		return time.Time{}, fmt.Errorf("binary timestamptz of %d bytes", len(data))
	}
	us := int64(binary_.BigEndian.Uint64(data))
	if us == math.MaxInt64 || us == math.MinInt64 {
		return time.Time{}, errors.New("infinite timestamp")
	}
	return pgEpoch.Add(time.Duration(us) * time.Microsecond).UTC(), nil
}

// decodeBytea reads bytea's hex output, \x followed by two digits per byte.
func decodeBytea(s string) ([]byte, error) {
	if !strings.HasPrefix(s, `\x`) {
		return nil, errors.New(`bytea value does not start with \x (bytea_output must be hex)`)
	}
	return hex.DecodeString(s[2:])
}
