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
	inner, err := withContext[sqliteConn](conn, "connection")
	if err != nil {
		return nil, err
	}
	return &gatedConn{sqliteConn: inner, gate: c.gate}, nil
}

// withContext is v, a connection or statement of the driver, as T, the driver's methods
// that database/sql calls with a context; or, closed, an error if it lacks them.
func withContext[T any](v interface{ Close() error }, what string) (T, error) {
	t, ok := v.(T)
	if !ok {
		v.Close()
		return t, fmt.Errorf("outbox: sqlite: the driver's %s (%T) lacks the context methods", what, v)
	}
	return t, nil
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

// enterFor takes the turn for a statement of kind run outside a transaction, if it writes,
// and returns what gives it back (nil when it took none). A transaction begun with a BEGIN
// statement holds the turn until the statement that ends it.
func (c *gatedConn) enterFor(ctx context.Context, kind statementKind) (leave func(), err error) {
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

// exec runs a statement of kind, with the turn it needs.
func (c *gatedConn) exec(ctx context.Context, kind statementKind, run func() (driver.Result, error)) (driver.Result, error) {
	leave, err := c.enterFor(ctx, kind)
	if err != nil {
		return nil, err
	}
	if leave != nil {
		defer leave()
	}
	res, err := run()
	if err != nil && kind == begins {
		c.endTx()
	}
	return res, err
}

// query runs a statement of kind that returns rows, with the turn it needs: a statement
// that writes and returns rows (RETURNING) holds SQLite's lock until its rows are closed.
func (c *gatedConn) query(ctx context.Context, kind statementKind, run func() (driver.Rows, error)) (driver.Rows, error) {
	leave, err := c.enterFor(ctx, kind)
	if err != nil {
		return nil, err
	}
	rows, err := run()
	if err != nil {
		if leave != nil {
			leave()
		}
		if kind == begins {
			c.endTx()
		}
		return nil, err
	}
	if leave == nil {
		return rows, nil
	}
	return &rowsLeaving{Rows: rows, leave: leave}, nil
}

func (c *gatedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.exec(ctx, kindOf(query), func() (driver.Result, error) { return c.sqliteConn.ExecContext(ctx, query, args) })
}

func (c *gatedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.query(ctx, kindOf(query), func() (driver.Rows, error) { return c.sqliteConn.QueryContext(ctx, query, args) })
}

func (c *gatedConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *gatedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.sqliteConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	inner, err := withContext[sqliteStmt](st, "statement")
	if err != nil {
		return nil, err
	}
	return &gatedStmt{sqliteStmt: inner, conn: c, kind: kindOf(query)}, nil
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
	conn *gatedConn
	kind statementKind
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
	return s.conn.exec(ctx, s.kind, func() (driver.Result, error) { return s.sqliteStmt.ExecContext(ctx, args) })
}

func (s *gatedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.conn.query(ctx, s.kind, func() (driver.Rows, error) { return s.sqliteStmt.QueryContext(ctx, args) })
}

// rowsLeaving gives the turn back when its rows are closed.
type rowsLeaving struct {
	driver.Rows
	leave func()
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

// kindOf tells what a statement does, by its first words: SELECT, EXPLAIN and VALUES read;
// every other statement may write. It reads only the statement's head: a Write's INSERT runs
// to many kilobytes.
func kindOf(query string) statementKind {
	first, rest := firstWord(query)
	switch strings.ToUpper(first) {
	case "SELECT", "EXPLAIN", "VALUES":
		return reads
	case "BEGIN":
		return begins
	case "COMMIT", "END":
		return ends
	case "ROLLBACK":
		if second, _ := firstWord(rest); strings.EqualFold(second, "TO") {
			return writes
		}
		return ends
	}
	return writes
}

// firstWord is the first word of q, after spaces, comments and parentheses, and what
// follows it.
func firstWord(q string) (word, rest string) {
	for {
		q = strings.TrimLeft(q, " \t\r\n(")
		switch {
		case strings.HasPrefix(q, "--"):
			_, q, _ = strings.Cut(q, "\n")
		case strings.HasPrefix(q, "/*"):
			_, q, _ = strings.Cut(q, "*/")
		default:
			end := strings.IndexAny(q, " \t\r\n(;")
			if end < 0 {
				return q, ""
			}
			return q[:end], q[end:]
		}
	}
}
