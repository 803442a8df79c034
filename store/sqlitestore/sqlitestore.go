// Package sqlitestore keeps the outbox in a SQLite database, through the pure-Go
// modernc.org/sqlite driver (no cgo).
//
// SQLite has one writer at a time and no change log to read, so a dispatcher polls it, and
// wakes at once when this process writes a message (see [sqlstore.Store.Subscribe]). Open
// the database with [Open], or with [DSN] in your own sql.Open, so that WAL journaling, a busy
// timeout and immediate transactions keep concurrent writers and the dispatcher from failing
// with SQLITE_BUSY.
package sqlitestore

import (
	"database/sql"
	"fmt"
	"net/url"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/outboxgo/outbox/store/sqlstore"
)

// DriverName is the database/sql driver name that modernc.org/sqlite registers.
const DriverName = "sqlite"

// Config configures the store. See [sqlstore.Config].
type Config = sqlstore.Config

// DSN returns the data source name for the SQLite file at path with the settings the outbox
// needs: WAL journal, 5 s busy timeout, NORMAL synchronous, foreign keys on, and transactions
// that take the write lock when they begin (a transaction that reads and then writes would
// otherwise fail with SQLITE_BUSY when another writer got in between).
func DSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	return "file:" + path + "?" + q.Encode()
}

// Open opens the SQLite database file at path (creating it if needed) with [DSN]'s settings.
func Open(path string) (*sql.DB, error) {
	db, err := sql.Open(DriverName, DSN(path))
	if err != nil {
		return nil, fmt.Errorf("outbox: open sqlite %s: %w", path, err)
	}
	return db, nil
}

// New returns the outbox store for db, a SQLite database opened with the modernc.org/sqlite
// driver (see [Open]). Call Migrate on it once to create the table.
func New(db *sql.DB, cfg Config) (*sqlstore.Store, error) {
	return sqlstore.New(db, sqlstore.SQLite(), cfg, sqlstore.Hooks{})
}
