package pgstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxgo/outbox/store"
)

// statusEvery is how often the reader confirms its position to the server when no recorded
// batch made it confirm sooner. A variable for tests.
var statusEvery = time.Second

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
		// A user without the REPLICATION attribute is refused for want of a privilege;
		// invalid authorization is pg_hba.conf turning the connection away.
		switch sqlState(err) {
		case codeInsufficientPrivilege, codeInvalidAuthorization:
			return nil, fmt.Errorf("%w: cannot open a replication connection (the user needs the REPLICATION attribute, and pg_hba.conf must admit it): %w", store.ErrLogUnavailable, err)
		}
		return nil, fmt.Errorf("outbox: open replication connection: %w", err)
	}
	args := []string{"proto_version '1'", "publication_names '" + r.pub + "'"}
	major, _, _ := strings.Cut(conn.ParameterStatus("server_version"), ".")
	if v, _ := strconv.Atoi(major); v >= 14 {
		// Binary values cost less to produce and to read than text: a bytea payload is
		// sent as itself rather than as hex. Logical messages carry log-only writes.
		args = append(args, "binary 'true'", "messages 'true'")
	}
	err = pglogrepl.StartReplication(ctx, conn, r.slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		if sqlState(err) == codeUndefinedObject { // the slot went away
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
	rc := &receiver{r: r, conn: conn, txns: txns, relations: map[uint32]*pglogrepl.RelationMessage{}, prefix: logMessagePrefix(r.relID)}
	defer rc.interruptAt(ctx)()
	// The server answers with a keepalive: the first message, which tells that it streams.
	// No position is confirmed by it (the server ignores positions of 0).
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{ReplyRequested: true}); err != nil {
		return fmt.Errorf("outbox: ask the replication stream for a keepalive: %w", err)
	}
	for {
		if r.takeConfirmNow() || !time.Now().Before(rc.nextSend) {
			if err := rc.confirm(ctx); err != nil {
				return err
			}
		}
		raw, err := rc.await(ctx)
		if err != nil {
			return err
		}
		if raw == nil {
			continue
		}
		if _, ok := raw.(*pgproto3.CopyData); ok && !r.streaming.Load() {
			if r.o.Status != nil {
				r.o.Status(store.LogStatus{Reading: true, LagBytes: -1})
			}
			r.streaming.Store(true)
		}
		if err := rc.take(ctx, raw); err != nil {
			return err
		}
	}
}

// receiver is what the goroutine that owns the replication connection keeps between
// messages.
type receiver struct {
	r         *reader
	conn      *pgconn.PgConn
	txns      chan<- txn
	relations map[uint32]*pglogrepl.RelationMessage
	cur       *txn     // the transaction being read
	cols      []column // the columns of the last insert read, kept for the next
	prefix    string   // of the logical messages of log-only writes to the table
	// interruptRead ends a wait for a message at once (see await).
	interruptRead func()
	inTxn         bool
	nextSend      time.Time // when the position is confirmed next
}

// takeConfirmNow reports whether a recorded batch asked for its position to be confirmed at
// once, and clears the request.
func (r *reader) takeConfirmNow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.confirmNow
	r.confirmNow = false
	return now
}

// confirm sends the server the confirmed position, and sets when to confirm next.
func (rc *receiver) confirm(ctx context.Context) error {
	rc.r.mu.Lock()
	pos := rc.r.confirmed
	rc.r.mu.Unlock()
	rc.nextSend = time.Now().Add(statusEvery)
	if pos == 0 {
		return nil
	}
	// ReplyRequested: the server answers with a keepalive that carries its position.
	err := pglogrepl.SendStandbyStatusUpdate(ctx, rc.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, ReplyRequested: true})
	if err != nil {
		return fmt.Errorf("outbox: confirm log position: %w", err)
	}
	return nil
}

// await waits for the next message until the next confirmation is due, or until a recorded
// batch interrupts it to be confirmed, or ctx ends; it returns nil then. The wait is a read
// deadline on the connection, which an interruption moves to now: a context for each message
// would cost a timer and two callbacks in pgconn each time, a third of the CPU time of
// receiving the log.
func (rc *receiver) await(ctx context.Context) (pgproto3.BackendMessage, error) {
	r := rc.r
	r.mu.Lock()
	if r.confirmNow || ctx.Err() != nil {
		r.mu.Unlock()
		return nil, ctx.Err()
	}
	// Under the lock, so that an interruption comes after this deadline, or is seen above.
	// A zero deadline would be none: a confirmation due at once is a deadline of now.
	deadline := rc.nextSend
	if deadline.IsZero() {
		deadline = time.Now()
	}
	err := rc.conn.Conn().SetReadDeadline(deadline)
	r.interrupt = rc.interruptRead
	r.mu.Unlock()
	var raw pgproto3.BackendMessage
	if err == nil {
		// Background: pgconn then watches no context.
		raw, err = rc.conn.ReceiveMessage(context.Background())
	}
	r.mu.Lock()
	r.interrupt = nil
	r.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if pgconn.Timeout(err) {
			return nil, nil // the connection survives a deadline: pgconn reads on where it stopped
		}
		return nil, fmt.Errorf("outbox: read replication stream: %w", err)
	}
	return raw, nil
}

// interruptAt ends a wait of await, when ctx ends or a recorded batch asks for its position
// to be confirmed at once, and returns the function that stops it doing so for ctx.
func (rc *receiver) interruptAt(ctx context.Context) (stop func() bool) {
	nc := rc.conn.Conn()
	rc.interruptRead = func() { nc.SetReadDeadline(time.Now()) }
	r := rc.r
	return context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.interrupt != nil {
			r.interrupt()
		}
	})
}

// take follows one message of the stream.
func (rc *receiver) take(ctx context.Context, raw pgproto3.BackendMessage) error {
	switch m := raw.(type) {
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("outbox: replication stream: %w", pgconn.ErrorResponseToPgError(m))
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return nil
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			return rc.keepalive(m.Data[1:])
		case pglogrepl.XLogDataByteID:
			return rc.walData(ctx, m.Data[1:])
		}
	}
	return nil
}

// keepalive takes the server's WAL end as confirmed between transactions when nothing is in
// flight, and answers at once when the server asks.
func (rc *receiver) keepalive(data []byte) error {
	ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data)
	if err != nil {
		return fmt.Errorf("outbox: replication keepalive: %w", err)
	}
	if !rc.inTxn {
		rc.r.confirmIdle(ka.ServerWALEnd)
	}
	if ka.ReplyRequested {
		rc.nextSend = time.Time{}
	}
	return nil
}

// walData follows one message of pgoutput: relations, transactions and their outbox rows.
func (rc *receiver) walData(ctx context.Context, data []byte) error {
	xld, err := pglogrepl.ParseXLogData(data)
	if err != nil {
		return fmt.Errorf("outbox: replication data: %w", err)
	}
	if len(xld.WALData) > 0 {
		switch xld.WALData[0] {
		case byte(pglogrepl.MessageTypeInsert):
			return rc.insert(xld.WALData[1:])
		case byte(pglogrepl.MessageTypeMessage):
			return rc.message(xld.WALData[1:])
		}
	}
	msg, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return fmt.Errorf("outbox: decode replication message: %w", err)
	}
	switch msg := msg.(type) {
	case *pglogrepl.RelationMessage:
		rc.relations[msg.RelationID] = msg
	case *pglogrepl.BeginMessage:
		rc.inTxn, rc.cur = true, &txn{}
	case *pglogrepl.CommitMessage:
		return rc.commit(ctx, msg)
	}
	return nil
}

// insert adds the message of a row inserted into the outbox table to the transaction; data is
// pgoutput's insert message after its type byte.
func (rc *receiver) insert(data []byte) error {
	relID, cols, err := readInsert(data, rc.cols[:0])
	if err != nil {
		return fmt.Errorf("outbox: decode replication message: %w", err)
	}
	rc.cols = cols
	if relID != rc.r.relID || rc.cur == nil {
		return nil
	}
	rel, ok := rc.relations[relID]
	if !ok {
		return fmt.Errorf("outbox: replication stream: insert into relation %d before its description", relID)
	}
	lm, err := decodeRow(rel, cols)
	if err != nil {
		// A row we cannot read is left to the sweep, which reads the table.
		rc.r.s.Logger().Error("cannot decode a logged outbox row; the sweep will deliver it", "error", err)
		return nil
	}
	rc.cur.msgs = append(rc.cur.msgs, lm)
	return nil
}

// message adds the outbox message of a log-only write to the transaction; data is pgoutput's
// message message after its type byte. A message that cannot be read stops the reader: the
// log is its only copy.
func (rc *receiver) message(data []byte) error {
	transactional, prefix, content, err := readLogicalMessage(data)
	if err != nil {
		return fmt.Errorf("outbox: decode replication message: %w", err)
	}
	if !transactional || rc.cur == nil || string(prefix) != rc.prefix { // compared without a copy
		return nil
	}
	lm, err := unpackMessage(content)
	if err != nil {
		return fmt.Errorf("outbox: replication stream: %w", err)
	}
	rc.cur.msgs = append(rc.cur.msgs, lm)
	return nil
}

// commit hands the transaction's messages to the deliverer, in parts of at most a batch. A
// transaction without any is confirmed when nothing is in flight.
func (rc *receiver) commit(ctx context.Context, msg *pglogrepl.CommitMessage) error {
	r := rc.r
	rc.inTxn = false
	cur := rc.cur
	rc.cur = nil
	if cur == nil || len(cur.msgs) == 0 {
		r.confirmIdle(msg.TransactionEndLSN)
		return nil
	}
	cur.end = msg.TransactionEndLSN
	r.mu.Lock()
	r.inFlight++
	r.mu.Unlock()
	for len(cur.msgs) > r.o.Batch() {
		part := txn{msgs: cur.msgs[:r.o.Batch():r.o.Batch()]}
		cur.msgs = cur.msgs[r.o.Batch():]
		if err := rc.hand(ctx, part); err != nil {
			return err
		}
	}
	return rc.hand(ctx, *cur)
}

// confirmIdle takes end as confirmed when no transaction is in flight: every message before
// it is then recorded.
func (r *reader) confirmIdle(end pglogrepl.LSN) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inFlight == 0 && end > r.confirmed {
		r.confirmed = end
	}
}

// hand passes t to the deliverer once fewer than two batches of messages wait for it,
// confirming positions meanwhile so that the server does not time the connection out
// (wal_sender_timeout) while the deliverer is slow (a broker outage).
func (rc *receiver) hand(ctx context.Context, t txn) error {
	r := rc.r
	for {
		timer := time.NewTimer(statusEvery)
		in := rc.txns
		if r.queued.Load() >= int64(2*r.o.Batch()) {
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
			if err := rc.confirm(ctx); err != nil {
				return err
			}
		}
	}
}
