package sqlitestore

import (
	"errors"
	"strings"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// dialect is the SQL of SQLite 3.35 or later (for RETURNING).
var dialect = sqlstore.Dialect{
	Name:          "sqlite",
	Quote:         '"',
	MaxParams:     32766,
	Epoch:         "0",
	UnixMicroTime: true,
	Now:           "CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
	Interval:      "%s",
	Claims:        sqlstore.ClaimsOneWriter,
	DeleteUpTo:    "DELETE FROM %[1]s WHERE seq IN (SELECT seq FROM %[1]s WHERE %[2]s LIMIT %[3]s)",
	Schema:        schema,
	Classify:      classify,
}

// SQLite's extended result codes the store tells apart.
const (
	codeConstraintUnique     = 2067 // SQLITE_CONSTRAINT_UNIQUE
	codeConstraintPrimaryKey = 1555 // SQLITE_CONSTRAINT_PRIMARYKEY
)

// classify tells the errors that Write and Check report as the store's own.
func classify(err error) error {
	var sqliteErr interface{ Code() int }
	if errors.As(err, &sqliteErr) {
		switch sqliteErr.Code() {
		case codeConstraintUnique, codeConstraintPrimaryKey:
			return store.ErrDuplicateID
		}
	}
	// SQLite reports a missing table or column as its generic SQLITE_ERROR, with no code of
	// its own: only the text tells.
	if msg := err.Error(); strings.Contains(msg, "no such table") || strings.Contains(msg, "no such column") {
		return store.ErrNotMigrated
	}
	return nil
}
