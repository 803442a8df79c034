package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// queryCounter counts the queries a pgx connection sends.
type queryCounter struct{ n *atomic.Int64 }

func (c queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// database is a fresh outbox, plus a way to open another pool on it and to count the
// queries the server received.
type database struct {
	st      dbtest.Store
	open    func() (dbtest.Store, error)
	queries func() (int64, error) // nil: the server cannot tell
	// counting, where set, opens another pool that counts the queries it sends, for the
	// idle case's dispatcher.
	counting func() (dbtest.Store, func() int64, error)
	cleanup  func()
}

// newDatabase creates a fresh, migrated outbox on the named database. It may return a
// database beside an error: its cleanup must still run.
func newDatabase(name string) (*database, error) {
	switch name {
	case "sqlite":
		return newSQLiteDatabase()
	case "postgres", "postgres-logonly":
		return newPostgresDatabase(name == "postgres-logonly")
	case "mariadb", "mysql":
		return newMariaDBDatabase()
	}
	return nil, fmt.Errorf("unknown database %q", name)
}

func newSQLiteDatabase() (*database, error) {
	dir, err := os.MkdirTemp("", "outbox-bench-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "bench.db")
	open := func() (dbtest.Store, error) {
		db, err := sqlitestore.Open(path)
		if err != nil {
			return nil, err
		}
		return dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	}
	st, err := open()
	if err != nil {
		return nil, err
	}
	return &database{st: st, open: open, cleanup: func() { os.RemoveAll(dir) }}, st.Migrate(context.Background())
}

func newPostgresDatabase(logOnly bool) (*database, error) {
	pg, err := newPostgres()
	if err != nil {
		return nil, err
	}
	open := func() (dbtest.Store, error) {
		db, err := pgstore.Open(pg.dsn)
		if err != nil {
			return nil, err
		}
		return dbtest.EngineOf(pgstore.New(db, pgstore.Config{LogOnly: logOnly}))
	}
	st, err := open()
	if err != nil {
		pg.drop()
		return nil, err
	}
	d := &database{st: st, open: open}
	// The idle case counts the queries the dispatcher's own pool sends. Postgres's own
	// count (pg_stat_database) is no measure at this scale: a backend reports it up to
	// 10 s late, so a 20 s window counts 3 of 10 queries, or start-up work as idle
	// queries. Only the idle case uses this pool: a pgx tracer slows the others.
	d.counting = func() (dbtest.Store, func() int64, error) { return openCountingPostgres(pg.dsn, logOnly) }
	d.cleanup = func() {
		st.DB().Close()
		pg.drop()
	}
	return d, st.Migrate(context.Background())
}

// openCountingPostgres opens a store on dsn whose pool counts the queries it sends.
func openCountingPostgres(dsn string, logOnly bool) (dbtest.Store, func() int64, error) {
	var sent atomic.Int64
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, nil, err
	}
	cfg.Tracer = queryCounter{&sent}
	// Pinged as pgstore.Open's pools are: after 10 s idle, not pgx's 1 s.
	pool := stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(_ context.Context, p stdlib.ShouldPingParams) bool {
		return p.IdleDuration > 10*time.Second
	}))
	cst, err := dbtest.EngineOf(pgstore.New(pool, pgstore.Config{LogOnly: logOnly}))
	return cst, sent.Load, err
}

func newMariaDBDatabase() (*database, error) {
	admin, err := mysqlstore.Open(dbtest.MySQLDSN())
	if err != nil {
		return nil, err
	}
	dbName := dbtest.Name("outbox_bench")
	if _, err := admin.Exec("CREATE DATABASE " + dbName); err != nil {
		return nil, fmt.Errorf("create database (is MariaDB running? make services): %w", err)
	}
	cfg, err := mysql.ParseDSN(dbtest.MySQLDSN())
	if err != nil {
		return nil, err
	}
	cfg.DBName = dbName
	open := func() (dbtest.Store, error) {
		db, err := mysqlstore.Open(cfg.FormatDSN())
		if err != nil {
			return nil, err
		}
		return dbtest.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	}
	st, err := open()
	if err != nil {
		return nil, err
	}
	d := &database{st: st, open: open}
	var own int64
	d.queries = func() (int64, error) {
		// Questions counts every statement clients sent, these reads of it included: take
		// them out.
		own++
		var name string
		var q int64
		err := admin.QueryRow("SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &q)
		return q - own, err
	}
	d.cleanup = func() {
		st.DB().Close()
		admin.Exec("DROP DATABASE " + dbName)
		admin.Close()
	}
	return d, st.Migrate(context.Background())
}
