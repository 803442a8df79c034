// Package mysqlstore keeps the outbox in a MySQL (8.0 or later) or MariaDB (10.6 or later)
// database, through go-sql-driver/mysql.
//
// Several dispatchers, in one process or many, can share the outbox: claims take a lease,
// and take turns through a named lock (GET_LOCK) for the few milliseconds a claim takes, which
// keeps each key's messages in write order across dispatchers. MySQL has no notifications: without the binlog, dispatchers poll, backing off
// when idle, and wake at once for messages written through the same Store value.
//
// # Reading the binlog
//
// The store's engine implements [store.LogReader]: it reads written messages from the server's row
// binlog, as a replica would, and hands them to the dispatcher as their transactions commit,
// in commit order, whoever wrote them (this library, another program, the mysql client).
// Nothing polls for them then. It needs:
//
//   - server settings log_bin, binlog_format=ROW and binlog_row_image=FULL (and a server_id);
//   - the REPLICATION SLAVE and REPLICATION CLIENT privileges (MariaDB calls the latter
//     BINLOG MONITOR) for the user of the DSN, besides its rights on the outbox tables;
//   - a database handle from [Open], which keeps the connection settings that the binlog
//     connection reuses (database/sql does not expose them).
//
// Otherwise the log reader fails with an error wrapping [store.ErrLogUnavailable] that says
// what is missing, and dispatchers poll. binlog_row_metadata=FULL is optional: with it, rows are
// mapped to columns by the names in the binlog; without it, by the table's current columns
// in information_schema, so that rows logged before a column was added or dropped are left
// to the sweep, and rows logged before a column was moved would be misread.
//
// One reader per outbox table reads the binlog: it holds a named lock (GET_LOCK) on a
// connection of its own, and the other instances wait as standbys and take over within about
// a second of its going away. The reader keeps its position (the last GTID of each domain on
// MariaDB, the file and offset on MySQL) in the table named after the outbox table with a
// "_log_position" suffix, written in the transaction that marks a batch delivered. A batch
// holds at most the dispatcher's batch size (a larger transaction is cut, and read again from
// its start after a crash, skipping what was marked), and is recorded while the next one is
// published, so after a crash at most those two batches are published again. Migrate records the server's current position there; messages
// written before it are delivered by the dispatchers' sweep. When the binlog no longer
// holds the stored position (its files were purged while no reader ran), the reader says so
// with [store.ErrLogUnavailable] and deletes the row, and the next try (a dispatcher's
// LogRetry later) starts from the server's current position: every message not yet delivered
// is in the table, and the sweep delivers what was written in between before the reader
// publishes from the binlog, in key order. With Config.ManualLogRecovery it leaves the row, and
// says so until an operator deletes it.
//
// The binlog holds every table of the server: the reader decodes only the inserts into its
// outbox table, and keeps its position when other tables change at most once a second.
package mysqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// Config configures the store. See [sqlstore.Config].
type Config = sqlstore.Config

// settingsDriver is the driver of a handle from Open: go-sql-driver's, carrying the
// connection settings that the binlog connection needs, so that New finds them in the handle
// it is given (database/sql hands out a handle's driver, not its settings).
type settingsDriver struct {
	mysql.MySQLDriver
	cfg *mysql.Config
}

// connector is go-sql-driver's connector, answering with a settingsDriver.
type connector struct {
	driver.Connector
	driver settingsDriver
}

func (c connector) Driver() driver.Driver { return c.driver }

// dsnForm is the form of the DSN that [Open] takes, for its messages.
const dsnForm = "mysql://user:pass@tcp(host:3306)/db"

// Open opens the database at dsn with the settings the outbox expects: times parsed as UTC,
// and arguments interpolated on the client, which saves a prepare round trip per query.
//
// The DSN is go-sql-driver/mysql's, user:pass@tcp(host:3306)/db?param=value, either bare or
// after mysql:// as the operator command (cmd/outbox) takes it: both open the same database.
// Open refuses any other form, such as a URL of another scheme or a URL-style
// mysql://user:pass@host:3306/db that the driver would read as something else, and an empty
// DSN, with an error that shows the expected form. The DSN's password never appears in
// errors.
func Open(dsn string) (*sql.DB, error) {
	cfg, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.InterpolateParams = true
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox: mysql DSN: %s", redact(err.Error(), dsn))
	}
	return sql.OpenDB(connector{Connector: conn, driver: settingsDriver{cfg: cfg.Clone()}}), nil
}

// schemeRE matches the scheme of a URL.
var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// parseDSN reads dsn in go-sql-driver's form, bare or after mysql://.
func parseDSN(dsn string) (*mysql.Config, error) {
	const prefix = "mysql://"
	native := dsn
	if len(dsn) >= len(prefix) && strings.EqualFold(dsn[:len(prefix)], prefix) {
		native = dsn[len(prefix):]
	} else if m := schemeRE.FindStringSubmatch(dsn); m != nil {
		// Name the scheme only: what follows may hold a password. (A bare DSN whose user
		// name is letters and whose password starts with "//" lands here too: put mysql://
		// before it.)
		return nil, fmt.Errorf("outbox: mysql DSN: scheme %q is not MySQL's: want %s, or the same without mysql://", m[1], dsnForm)
	}
	if native == "" {
		return nil, fmt.Errorf("outbox: mysql DSN is empty: want %s, or the same without mysql://", dsnForm)
	}
	cfg, err := mysql.ParseDSN(native)
	if err != nil {
		return nil, fmt.Errorf("outbox: mysql DSN: %s: want %s (go-sql-driver/mysql's form, with tcp(...) around the address), or the same without mysql://",
			redact(err.Error(), native), dsnForm)
	}
	return cfg, nil
}

// redact hides the password of dsn in msg. The driver's messages quote parts of the DSN
// (a network name, a parameter's value), which in a malformed DSN may hold it. The driver
// reads the password between the first colon and the last @ before the last slash; in a DSN
// without a slash, before the last @.
func redact(msg, dsn string) string {
	for _, end := range []int{strings.LastIndexByte(dsn, '/'), len(dsn)} {
		if end < 0 {
			continue
		}
		at := strings.LastIndexByte(dsn[:end], '@')
		if at < 0 {
			continue
		}
		if colon := strings.IndexByte(dsn[:at], ':'); colon >= 0 && colon+1 < at {
			msg = strings.ReplaceAll(msg, dsn[colon+1:at], "xxxxx")
		}
	}
	return msg
}

// Store is an outbox in a MySQL or MariaDB database: Write in your transactions, Migrate at
// start-up, the operator calls; pass it to dispatcher.New, which drives its Engine.
type Store struct {
	sqlstore.Outbox
}

// New returns the outbox store for db, a MySQL or MariaDB database (see [Open]). Call Migrate
// on it once to create the table.
func New(db *sql.DB, cfg Config) (*Store, error) {
	s, err := newEngine(db, cfg)
	if err != nil {
		return nil, err
	}
	return &Store{s.Outbox()}, nil
}

// newEngine returns the engine of the outbox store for db.
func newEngine(db *sql.DB, cfg Config) (*sqlstore.Store, error) {
	if db == nil {
		return nil, errors.New("outbox: mysqlstore.New: db is nil")
	}
	var conn *mysql.Config
	if d, ok := db.Driver().(settingsDriver); ok {
		conn = d.cfg
	}
	return sqlstore.New(db, dialect, cfg, sqlstore.Hooks{
		Migrate: recordStart,
		Lock:    lock,
		OpenLog: func(ctx context.Context, s *sqlstore.Store, o store.LogOptions) (store.LogStream, error) {
			return openLog(ctx, s, o, conn)
		},
	})
}

// schema holds the outbox schema's steps, templates of the table's names: Migrate applies
// them, and migrations/ holds them for the default table, for your own migration tool.
//
//go:embed schema/*.sql
var schema embed.FS
