package sqlitestore

import (
	"context"
	"database/sql/driver"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// SQLite lets one writer at a time in, and a writer that finds the database locked sleeps in
// SQLite's busy handler between tries, for 1, 2, 5 and up to 100 ms: under steady writes a
// dispatcher's claim could lose several rounds in a row and wait a tenth of a second or more.
// The connections that Open makes take turns at a gate of the database file's instead: a
// writer waits in line in this process, and goes in as soon as the writer before it is done.
// Reads outside a transaction pass by, as WAL lets them. Other processes still meet the busy
// handler.

// gateTimeout bounds the wait at the gate, as busy_timeout bounds the wait in SQLite.
var gateTimeout = 5 * time.Second

// errGateTimeout is the error of a write that waited gateTimeout for another write of this
// process: a transaction held open that long, or a write through the database handle by a
// goroutine whose own transaction is open (which waits for itself).
func errGateTimeout() error {
	return fmt.Errorf("outbox: sqlite: database is locked: another write of this process held it for %v (a write through the database handle while your transaction is open?)", gateTimeout)
}

// gate lets one write at a time in: a transaction other than a read-only one, from BEGIN to
// its end, or a statement that writes, outside a transaction.
type gate struct{ turn chan struct{} }

// gates holds the gate of each database file this process opened, by absolute path.
var gates sync.Map

func gateOf(path string) *gate {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	g, _ := gates.LoadOrStore(path, &gate{turn: make(chan struct{}, 1)})
	return g.(*gate)
}

// enter waits for the turn. Waiters are let in in the order they came.
func (g *gate) enter(ctx context.Context) error {
	select {
	case g.turn <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(gateTimeout)
	defer t.Stop()
	select {
	case g.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errGateTimeout()
	}
}

func (g *gate) leave() { <-g.turn }

// connector opens connections of the SQLite driver that take turns at a gate.
type connector struct {
	dsn  string
	drv  driver.Driver
	gate *gate
}

func (c *connector) Driver() driver.Driver { return c.drv }

func (c *connector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	inner, ok := conn.(sqliteConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("outbox: sqlite: the driver's connection (%T) lacks the context methods", conn)
	}
	return &gatedConn{sqliteConn: inner, gate: c.gate}, nil
}

// sqliteConn is what modernc.org/sqlite's connections implement, and database/sql uses.
type sqliteConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

// gatedConn is a connection whose writes take turns at its file's gate. database/sql uses a
// connection from one goroutine at a time, so inTx needs no lock.
type gatedConn struct {
	sqliteConn
	gate *gate
	inTx bool // this connection's transaction holds the turn
}

func (c *gatedConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *gatedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if opts.ReadOnly {
		return c.sqliteConn.BeginTx(ctx, opts)
	}
	if err := c.gate.enter(ctx); err != nil {
		return nil, err
	}
	tx, err := c.sqliteConn.BeginTx(ctx, opts)
	if err != nil {
		c.gate.leave()
		return nil, err
	}
	c.inTx = true
	return &gatedTx{Tx: tx, conn: c}, nil
}

// endTx gives the turn back when the connection's transaction ends.
func (c *gatedConn) endTx() {
	if c.inTx {
		c.inTx = false
		c.gate.leave()
	}
}

func (c *gatedConn) Close() error {
	c.endTx()
	return c.sqliteConn.Close()
}

// enterFor takes the turn for a statement run outside a transaction, if it writes, and
// returns what gives it back (nil when it took none). A transaction begun with a BEGIN
// statement holds the turn until the statement that ends it.
func (c *gatedConn) enterFor(ctx context.Context, query string) (leave func(), err error) {
	kind := kindOf(query)
	switch {
	case kind == ends:
		return c.endTx, nil
	case c.inTx || kind == reads:
		return nil, nil
	}
	if err := c.gate.enter(ctx); err != nil {
		return nil, err
	}
	if kind == begins {
		c.inTx = true
		return nil, nil
	}
	return sync.OnceFunc(c.gate.leave), nil
}

func (c *gatedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	leave, err := c.enterFor(ctx, query)
	if err != nil {
		return nil, err
	}
	if leave != nil {
		defer leave()
	}
	res, err := c.sqliteConn.ExecContext(ctx, query, args)
	if err != nil && kindOf(query) == begins {
		c.endTx()
	}
	return res, err
}

func (c *gatedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	leave, err := c.enterFor(ctx, query)
	if err != nil {
		return nil, err
	}
	rows, err := c.sqliteConn.QueryContext(ctx, query, args)
	if err != nil && leave != nil {
		leave()
	}
	if err != nil {
		return nil, err
	}
	return gatedRows(rows, leave), nil
}

func (c *gatedConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *gatedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.sqliteConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	inner, ok := st.(sqliteStmt)
	if !ok {
		st.Close()
		return nil, fmt.Errorf("outbox: sqlite: the driver's statement (%T) lacks the context methods", st)
	}
	return &gatedStmt{sqliteStmt: inner, conn: c, query: query}, nil
}

type gatedTx struct {
	driver.Tx
	conn *gatedConn
}

func (tx *gatedTx) Commit() error {
	defer tx.conn.endTx()
	return tx.Tx.Commit()
}

func (tx *gatedTx) Rollback() error {
	defer tx.conn.endTx()
	return tx.Tx.Rollback()
}

// sqliteStmt is what modernc.org/sqlite's statements implement, and database/sql uses.
type sqliteStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

type gatedStmt struct {
	sqliteStmt
	conn  *gatedConn
	query string
}

func (s *gatedStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), named(args))
}

func (s *gatedStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), named(args))
}

func named(args []driver.Value) []driver.NamedValue {
	nv := make([]driver.NamedValue, len(args))
	for i, v := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return nv
}

func (s *gatedStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	leave, err := s.conn.enterFor(ctx, s.query)
	if err != nil {
		return nil, err
	}
	if leave != nil {
		defer leave()
	}
	res, err := s.sqliteStmt.ExecContext(ctx, args)
	if err != nil && kindOf(s.query) == begins {
		s.conn.endTx()
	}
	return res, err
}

func (s *gatedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	leave, err := s.conn.enterFor(ctx, s.query)
	if err != nil {
		return nil, err
	}
	rows, err := s.sqliteStmt.QueryContext(ctx, args)
	if err != nil && leave != nil {
		leave()
	}
	if err != nil {
		return nil, err
	}
	return gatedRows(rows, leave), nil
}

// rowsLeaving gives the turn back when its rows are closed: a statement that writes and
// returns rows (RETURNING) holds SQLite's lock until then.
type rowsLeaving struct {
	driver.Rows
	leave func()
}

func gatedRows(rows driver.Rows, leave func()) driver.Rows {
	if leave == nil {
		return rows
	}
	return &rowsLeaving{Rows: rows, leave: leave}
}

func (r *rowsLeaving) Close() error {
	defer r.leave()
	return r.Rows.Close()
}

// statementKind is what a statement does to the turn.
type statementKind int

const (
	reads  statementKind = iota // passes by
	writes                      // takes the turn for itself
	begins                      // BEGIN: takes the turn until the transaction ends
	ends                        // COMMIT, END or ROLLBACK (not ROLLBACK TO): gives it back
)

// kindOf tells what a statement does, by its first word (after spaces, comments and
// parentheses): SELECT, EXPLAIN and VALUES read; every other statement may write.
func kindOf(query string) statementKind {
	q := query
	for {
		q = strings.TrimLeft(q, " \t\r\n(")
		switch {
		case strings.HasPrefix(q, "--"):
			_, q, _ = strings.Cut(q, "\n")
		case strings.HasPrefix(q, "/*"):
			_, q, _ = strings.Cut(q, "*/")
		default:
			words := strings.Fields(strings.ToUpper(q))
			if len(words) == 0 {
				return writes
			}
			switch strings.TrimRight(words[0], "(;") {
			case "SELECT", "EXPLAIN", "VALUES":
				return reads
			case "BEGIN":
				return begins
			case "COMMIT", "END":
				return ends
			case "ROLLBACK":
				if len(words) > 1 && strings.TrimRight(words[1], ";") == "TO" {
					return writes
				}
				return ends
			}
			return writes
		}
	}
}
