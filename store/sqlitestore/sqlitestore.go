// Package sqlitestore keeps the outbox in a SQLite database, through the pure-Go
// modernc.org/sqlite driver (no cgo).
//
// SQLite has one writer at a time and no change log to read, so a dispatcher polls it, and
// wakes at once when this process writes a message (see [sqlstore.Store.Subscribe]). Open
// the database with [Open], or with [DSN] in your own sql.Open, so that WAL journaling, a busy
// timeout and immediate transactions keep concurrent writers and the dispatcher from failing
// with SQLITE_BUSY; Open's handles also have the writers of this process wait in line rather
// than sleep in SQLite's busy handler.
package sqlitestore

import (
	"database/sql"
	"database/sql/driver"
	"embed"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// DriverName is the database/sql driver name that modernc.org/sqlite registers.
const DriverName = "sqlite"

// Config configures the store. See [sqlstore.Config].
type Config = sqlstore.Config

// DSN returns the data source name for the SQLite file at path with the settings the outbox
// needs: WAL journal, 5 s busy timeout, NORMAL synchronous, foreign keys on, and transactions
// that take the write lock when they begin (a transaction that reads and then writes would
// otherwise fail with SQLITE_BUSY when another writer got in between). A handle of your own
// with this DSN waits for other writers in SQLite's busy handler, not in line as [Open]'s do.
func DSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	return "file:" + path + "?" + q.Encode()
}

// dsnForm is the form of the DSN that [Open] takes, for its messages.
const dsnForm = "sqlite:///path/to/app.db (or sqlite://relative.db, file:/path/to/app.db, or the bare path)"

// Open opens the SQLite database file named by dsn (creating it if needed) with [DSN]'s
// settings.
//
// The DSN is the file's path, either bare or after sqlite:// or file:, as the operator
// command (cmd/outbox) takes it: sqlite:///var/lib/app.db, file:/var/lib/app.db and
// /var/lib/app.db open the same file, and sqlite://app.db opens app.db in the working
// directory. Open refuses a DSN with query parameters (it sets its own: to choose others,
// sql.Open [DriverName] with a DSN of your own, like [DSN]'s), a URL of another scheme and
// an empty DSN, with an error that shows the expected form.
//
// The writes of the handles that Open returns for one file take turns in this process: a
// transaction (but a read-only one) from its BEGIN to its end, and a statement that writes
// outside a transaction, each in the order they came, instead of sleeping in SQLite's busy
// handler for up to 100 ms between tries. So a write through the handle while a transaction
// of the same goroutine is open waits for itself: it fails after 5 s, as it would with
// SQLITE_BUSY. Reads outside a transaction do not wait.
func Open(dsn string) (*sql.DB, error) {
	path, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(&connector{dsn: DSN(path), drv: sqliteDriver(), gate: gateOf(path)}), nil
}

// sqliteDriver is the driver that modernc.org/sqlite registers, with the functions and
// collations registered on it; a new sqlite.Driver would have none.
var sqliteDriver = sync.OnceValue(func() driver.Driver {
	db, _ := sql.Open(DriverName, "") // connects to nothing: only the driver is wanted
	defer db.Close()
	return db.Driver()
})

// schemeRE matches the scheme of a URL.
var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// parseDSN returns the file path that dsn names.
func parseDSN(dsn string) (string, error) {
	path := dsn
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "sqlite://"):
		path = dsn[len("sqlite://"):]
	case strings.HasPrefix(lower, "file:"):
		path = dsn[len("file:"):]
	default:
		if m := schemeRE.FindStringSubmatch(dsn); m != nil {
			// Name the scheme only: what follows may hold a password.
			return "", fmt.Errorf("outbox: sqlite DSN: scheme %q is not SQLite's: want %s", m[1], dsnForm)
		}
	}
	switch {
	case path == "":
		return "", fmt.Errorf("outbox: sqlite DSN names no file: want %s", dsnForm)
	case strings.ContainsRune(path, '?'):
		// The parameters are not shown: a driver may take a key among them.
		file, _, _ := strings.Cut(path, "?")
		return "", fmt.Errorf("outbox: sqlite DSN of %s has query parameters, and Open sets its own (WAL journaling, a busy timeout): want %s, the file path only", file, dsnForm)
	}
	return path, nil
}

// Store is an outbox in a SQLite database: Write in your transactions, Migrate at start-up,
// the operator calls; pass it to dispatcher.New, which drives its Engine.
type Store struct {
	sqlstore.Outbox
}

// New returns the outbox store for db, a SQLite database opened with the modernc.org/sqlite
// driver (see [Open]). Call Migrate on it once to create the table.
func New(db *sql.DB, cfg Config) (*Store, error) {
	s, err := sqlstore.New(db, dialect, cfg, sqlstore.Hooks{})
	if err != nil {
		return nil, err
	}
	return &Store{s.Outbox()}, nil
}

// schema holds the outbox schema's steps, templates of the table's names: Migrate applies
// them, and migrations/ holds them for the default table, for your own migration tool.
//
//go:embed schema/*.sql
var schema embed.FS
