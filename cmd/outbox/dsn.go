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

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// dsnForms names the DSN forms the program accepts, for its messages. The stores' Open
// functions take the same forms (and their drivers' own), so a DSN that works here works in
// the application, and the other way round.
const dsnForms = "postgres://..., postgresql://..., mysql://<go-sql-driver DSN> such as mysql://user:pass@tcp(host:3306)/db, sqlite://<path> or file:<path>"

// outboxStore is what the program calls on a store of this module's engine: the operator
// calls, the schema's steps, and the table's name. Every store package's Config is one type,
// pgstore.Config.
type outboxStore interface {
	store.Engine
	store.Outbox
	store.Operator
	Migrate(ctx context.Context) error
	Migrations() ([]store.Migration, error)
	QualifiedName() string
}

// backend is how the program reaches the outbox in one kind of database.
type backend struct {
	name string
	// open is the store's Open, which takes the DSN as given, scheme and all.
	open func(dsn string) (*sql.DB, error)
	new  func(db *sql.DB, cfg pgstore.Config) (outboxStore, error)
	// exists, when set, returns an error when the database is plainly not there, before
	// opening it would create it (a SQLite file).
	exists func(dsn string) error
	// inspectLog reads the state of the change log reader, for stores whose Capabilities
	// declare a ChangeLog.
	inspectLog func(ctx context.Context, db *sql.DB, table string) (logReport, error)
	// afterMigrate describes what Migrate does besides applying the migrations.
	afterMigrate func(st outboxStore) string
}

var (
	postgresBackend = backend{
		name: "postgres",
		open: pgstore.Open,
		new: func(db *sql.DB, cfg pgstore.Config) (outboxStore, error) {
			return store.EngineAs[outboxStore](pgstore.New(db, cfg))
		},
		inspectLog: postgresLog,
		afterMigrate: func(st outboxStore) string {
			_, pub := pgstore.DefaultNames("", st.QualifiedName())
			return fmt.Sprintf("creates the publication %s for the log reader and, when wal_level is logical, the replication slot %s_ and the first 8 hex digits of the MD5 of the database's name (pgoutput), unless the database has a slot %s from before", pub, pub, pub)
		},
	}
	mysqlBackend = backend{
		name: "mysql",
		open: mysqlstore.Open,
		new: func(db *sql.DB, cfg pgstore.Config) (outboxStore, error) {
			return store.EngineAs[outboxStore](mysqlstore.New(db, cfg))
		},
		inspectLog: mysqlLog,
		afterMigrate: func(st outboxStore) string {
			return fmt.Sprintf("records the binlog position where the log reader starts in %s_log_position, when the server writes a binlog", st.QualifiedName())
		},
	}
	sqliteBackend = backend{
		name: "sqlite",
		open: sqlitestore.Open,
		new: func(db *sql.DB, cfg pgstore.Config) (outboxStore, error) {
			return store.EngineAs[outboxStore](sqlitestore.New(db, cfg))
		},
		exists: func(dsn string) error {
			path := dsn // sqlitestore.Open took it: a path after sqlite:// or file:
			for _, prefix := range []string{"sqlite://", "file:"} {
				if strings.HasPrefix(strings.ToLower(path), prefix) {
					path = path[len(prefix):]
					break
				}
			}
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("cannot reach the sqlite database: there is no file %s (`outbox migrate` creates it)", path)
			}
			return nil
		},
	}
)

var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// parseDSN finds the backend of dsn by its scheme. The backend's Open checks the rest.
func parseDSN(dsn string) (backend, error) {
	lower := strings.ToLower(dsn)
	for _, f := range []struct {
		prefix string
		b      backend
	}{
		{"postgres://", postgresBackend},
		{"postgresql://", postgresBackend},
		{"mysql://", mysqlBackend},
		{"sqlite://", sqliteBackend},
		{"file:", sqliteBackend},
	} {
		if strings.HasPrefix(lower, f.prefix) {
			return f.b, nil
		}
	}
	// The DSN may hold a password: name only its scheme.
	if m := schemeRE.FindStringSubmatch(dsn); m != nil {
		return backend{}, usagef("DSN scheme %q is not supported; want %s", m[1], dsnForms)
	}
	return backend{}, usagef("the DSN has no scheme that names a database; want %s", dsnForms)
}
