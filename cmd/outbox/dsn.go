package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
	"github.com/outboxgo/outbox/store/sqlstore"
)

// dsnForms names the DSN forms the program accepts, for its messages.
const dsnForms = "postgres://..., postgresql://..., mysql://<go-sql-driver DSN> such as mysql://user:pass@tcp(host:3306)/db, sqlite://<path> or file:<path>"

// backend is how the program reaches the outbox in one kind of database.
type backend struct {
	name string
	open func(dsn string) (*sql.DB, error)
	new  func(db *sql.DB, cfg sqlstore.Config) (*sqlstore.Store, error)
	// exists, when set, returns an error when the database is plainly not there, before
	// opening it would create it (a SQLite file).
	exists func(dsn string) error
	// inspectLog reads the state of the change log reader, for stores whose Capabilities
	// declare a ChangeLog.
	inspectLog func(ctx context.Context, db *sql.DB, table string) (logReport, error)
	// afterMigrate describes what Migrate does besides applying the migrations.
	afterMigrate func(st *sqlstore.Store) string
}

var (
	postgresBackend = backend{
		name:       "postgres",
		open:       pgstore.Open,
		new:        pgstore.New,
		inspectLog: postgresLog,
		afterMigrate: func(st *sqlstore.Store) string {
			slot, pub := pgstore.Names(st.QualifiedName())
			return fmt.Sprintf("creates the publication %s for the log reader and, when wal_level is logical, the replication slot %s (pgoutput)", pub, slot)
		},
	}
	mysqlBackend = backend{
		name:       "mysql",
		open:       mysqlstore.Open,
		new:        mysqlstore.New,
		inspectLog: mysqlLog,
		afterMigrate: func(st *sqlstore.Store) string {
			return fmt.Sprintf("records the binlog position where the log reader starts in %s_log_position, when the server writes a binlog", st.QualifiedName())
		},
	}
	sqliteBackend = backend{
		name: "sqlite",
		open: sqlitestore.Open,
		new:  sqlitestore.New,
		exists: func(path string) error {
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("cannot reach the sqlite database: there is no file %s (`outbox migrate` creates it)", path)
			}
			return nil
		},
	}
)

var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// parseDSN finds the backend of dsn, and the DSN that its Open takes.
func parseDSN(dsn string) (backend, string, error) {
	lower := strings.ToLower(dsn)
	for _, f := range []struct {
		prefix string
		strip  bool // Open takes what follows the prefix
		needs  string
		b      backend
	}{
		{"postgres://", false, "", postgresBackend},
		{"postgresql://", false, "", postgresBackend},
		{"mysql://", true, "a go-sql-driver DSN, such as mysql://user:pass@tcp(host:3306)/db", mysqlBackend},
		{"sqlite://", true, "a file path", sqliteBackend},
		{"file:", true, "a file path", sqliteBackend},
	} {
		if !strings.HasPrefix(lower, f.prefix) {
			continue
		}
		if !f.strip {
			return f.b, dsn, nil
		}
		rest := dsn[len(f.prefix):]
		switch {
		case rest == "":
			return backend{}, "", usagef("a DSN that starts with %s needs %s after it", f.prefix, f.needs)
		case f.b.name == "sqlite" && strings.ContainsRune(rest, '?'):
			return backend{}, "", usagef("the sqlite DSN %s has query parameters; give the file path only (the program sets WAL mode and a busy timeout itself)", dsn)
		}
		return f.b, rest, nil
	}
	// The DSN may hold a password: name only its scheme.
	if m := schemeRE.FindStringSubmatch(dsn); m != nil {
		return backend{}, "", usagef("DSN scheme %q is not supported; want %s", m[1], dsnForms)
	}
	return backend{}, "", usagef("the DSN has no scheme that names a database; want %s", dsnForms)
}
