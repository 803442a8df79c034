// Package mysqlstore keeps the outbox in a MySQL (8.0 or later) or MariaDB (10.6 or later)
// database, through go-sql-driver/mysql.
//
// Several dispatchers, in one process or many, can share the outbox: claims use FOR UPDATE
// SKIP LOCKED with a lease, and take turns through a named lock (GET_LOCK) for the few
// milliseconds a claim takes, which keeps each key's messages in write order across
// dispatchers. MySQL has no notifications: dispatchers poll, backing off when idle, and wake
// at once for messages written through the same Store value.
package mysqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/store/sqlstore"
)

// Config configures the store. See [sqlstore.Config].
type Config = sqlstore.Config

// Open opens the database at dsn (go-sql-driver/mysql's format, user:pass@tcp(host:port)/db)
// with the settings the outbox expects: times parsed as UTC, and arguments interpolated on the
// client, which saves a prepare round trip per query. The DSN's password never appears in
// errors.
func Open(dsn string) (*sql.DB, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("outbox: mysql DSN: %w", err)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.InterpolateParams = true
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox: mysql DSN: %w", err)
	}
	return sql.OpenDB(conn), nil
}

// New returns the outbox store for db, a MySQL or MariaDB database (see [Open]). Call Migrate
// on it once to create the table.
func New(db *sql.DB, cfg Config) (*sqlstore.Store, error) {
	if db == nil {
		return nil, errors.New("outbox: mysqlstore.New: db is nil")
	}
	return sqlstore.New(db, sqlstore.MySQL(), cfg, sqlstore.Hooks{})
}
