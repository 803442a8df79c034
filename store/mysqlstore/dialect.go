package mysqlstore

import (
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// dialect is the SQL of MySQL 8.0 and MariaDB 10.6 or later.
var dialect = sqlstore.Dialect{
	Name:      "mysql",
	Quote:     '`',
	MaxParams: 65535,
	Epoch:     "'1970-01-01 00:00:00'",
	// A blank token as wide as a claim's, so that a claim updates the row in place (see
	// schema step 5).
	NoToken: "''",
	Now:     "UTC_TIMESTAMP(6)",
	// MySQL has no partial indexes: a generated column marks these messages (schema step 6).
	Waiting:   "waiting = 1",
	Interval:  "INTERVAL %s MICROSECOND",
	Claims:    sqlstore.ClaimsInTurnsOnASession,
	ShareLock: " LOCK IN SHARE MODE",
	// MySQL allows no LIMIT in an IN subquery.
	DeleteUpTo: "DELETE FROM %[1]s WHERE %[2]s LIMIT %[3]s",
	Schema:     schema,
	Classify:   classify,
}

// classify tells the errors that Write and Check report as the store's own.
func classify(err error) error {
	switch sqlErrNumber(err) {
	case errNoSuchTable, errNoSuchColumn, errNoSuchDatabase:
		return store.ErrNotMigrated
	case errTableDenied, errColumnDenied, errDBDenied:
		return store.ErrPermission
	case errDuplicateEntry:
		return store.ErrDuplicateID
	}
	return nil
}
