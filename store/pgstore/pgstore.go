// Package pgstore keeps the outbox in a PostgreSQL database (12 or later), through pgx's
// database/sql driver.
//
// Several dispatchers, in one process or many, can share the outbox: claims take messages
// with a lease, pass over those that other claims hold, and take turns through a
// transaction-scoped advisory lock for the few milliseconds a claim takes, which keeps each
// key's messages in write order across dispatchers. Write sends pg_notify on the table's channel, which Postgres delivers when the
// transaction commits; the store LISTENs on one connection and wakes its dispatchers, so
// latency stays low while idle polling stays slow. Notifications need a session connection:
// behind PgBouncer, use session pooling for the dispatcher's database handle.
//
// # Reading the WAL
//
// The store's engine implements [store.LogReader]: it reads written messages through logical
// replication with the built-in pgoutput plugin, from a publication of the outbox table's
// inserts and a permanent replication slot (see [DefaultNames]), and hands them to the dispatcher as
// their transactions commit, in commit order, whoever wrote them. Rows are decoded from the
// log itself, with no query per message. It needs:
//
//   - wal_level=logical (a server restart), and a free replication slot and WAL sender
//     (max_replication_slots, max_wal_senders);
//   - the REPLICATION attribute for the user of the DSN (ALTER ROLE ... REPLICATION), and a
//     pg_hba.conf line that admits its replication connections to the database;
//   - Migrate run once by a user that may create the publication and the slot: creating a
//     slot waits for every write transaction open at that moment, so it is not done at start
//     (the reader creates one only in place of a lost slot, while the dispatchers poll).
//
// Otherwise the log reader fails with an error wrapping [store.ErrLogUnavailable] that says
// what is missing, and dispatchers poll. One reader per outbox holds the slot; other instances wait on
// an advisory lock and take over within about a second. The reader confirms to the server the
// commit position of transactions whose messages are all recorded, and, when idle, the end of
// the WAL, so that the slot does not keep WAL on a quiet outbox. A batch holds at most the
// dispatcher's batch size (a larger transaction is cut, and read again from its start after a
// crash, skipping what was marked), and is recorded while the next is published: after a
// crash at most those two batches are published again. A slot that
// no reader consumes keeps WAL on the server: drop it (pg_drop_replication_slot) once the
// outbox is retired, or set max_slot_wal_keep_size, past which the server invalidates it.
//
// A slot that is dropped or invalidated loses no message: every message not yet delivered is
// in the table, and the dispatchers poll. The reader says so at its first try, and at its next
// (a dispatcher's LogRetry later) drops an invalidated slot and creates a new one, which
// carries what commits from then on; before it publishes from it, the sweep delivers what was
// written in between, in key order. With Config.ManualLogRecovery the dispatchers poll instead
// until an operator (drops an invalidated slot and) runs Migrate. See docs/modes.md.
//
// # Log-only writes
//
// With Config.LogOnly (Postgres 14 or later), Write writes each message as a logical decoding
// message of the caller's transaction, so that the table is not touched and only the WAL
// carries the message; the reader publishes it with nothing to mark. Its seq comes from the
// table's sequence, on which the writing role needs USAGE. A message that fails moves into
// the table, where polling retries or parks it in its key's order. There is no polling
// fallback for the rest: Migrate, Check and Write fail (Write writing nothing, with an error
// wrapping store.ErrLogUnavailable) unless the slot and the publication exist and the slot
// is valid, and a slot dropped or invalidated (max_slot_wal_keep_size) loses what it had not
// confirmed; the reader does not create a new one: Migrate does. While no reader runs,
// messages wait in the WAL. After a crash, the two batches in flight are published again,
// and so is every part of a transaction larger than the consumer's batch that was being read.
package pgstore

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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// Config configures the store. See [sqlstore.Config].
type Config = sqlstore.Config

// dsnForm is the form of the DSN that [Open] takes, for its messages.
const dsnForm = "postgres://user:pass@host:5432/db?sslmode=disable (or postgresql://), or libpq's key=value form"

// Open opens the Postgres database at dsn through pgx's database/sql driver. Connections idle
// for less than 10 s are reused without a liveness ping (pgx pings after 1 s), so an idle
// dispatcher polling once a second sends one query a second, not two.
//
// The DSN is a URL, postgres://user:pass@host:5432/db?sslmode=disable (or postgresql://),
// which the operator command (cmd/outbox) takes too, or libpq's key=value form, "host=db
// user=app dbname=app", which pgx reads as well; settings that the DSN leaves out come from
// the PG* environment variables, as with libpq. Open refuses a URL of another scheme and
// whatever pgx cannot read, with an error that shows the expected form. The DSN's password
// never appears in errors.
func Open(dsn string) (*sql.DB, error) {
	if m := schemeRE.FindStringSubmatch(dsn); m != nil {
		scheme := strings.ToLower(m[1])
		if scheme != "postgres" && scheme != "postgresql" {
			// Name the scheme only: what follows may hold a password, in a form that pgx's
			// redaction does not know.
			return nil, fmt.Errorf("outbox: postgres DSN: scheme %q is not Postgres's: want %s", m[1], dsnForm)
		}
		dsn = scheme + dsn[len(scheme):] // schemes are case-insensitive; pgx knows them in lower case
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors redact the password.
		return nil, fmt.Errorf("outbox: postgres DSN: %w: want %s", err, dsnForm)
	}
	return stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(_ context.Context, p stdlib.ShouldPingParams) bool {
		return p.IdleDuration > pingAfterIdle
	})), nil
}

// schemeRE matches the scheme of a URL.
var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

const pingAfterIdle = 10 * time.Second

// Store is an outbox in a Postgres database: Write in your transactions, Migrate at start-up,
// the operator calls; pass it to dispatcher.New, which drives its Engine.
type Store struct {
	sqlstore.Outbox
}

// New returns the outbox store for db, which must use pgx's driver ([Open], stdlib.OpenDB or
// sql.Open("pgx", ...)). Call Migrate on it once to create the table.
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
		return nil, errors.New("outbox: pgstore.New: db is nil")
	}
	if _, ok := db.Driver().(*stdlib.Driver); !ok {
		return nil, fmt.Errorf("outbox: pgstore.New: db uses %T; open it with pgstore.Open or pgx's stdlib driver", db.Driver())
	}
	return sqlstore.New(db, dialect, cfg, sqlstore.Hooks{Listen: listen, Migrate: setUpLog, OpenLog: openLog, LogOnly: logOnly, Lock: lock})
}

// logOnly is ready while the outbox's slot and publication exist on Postgres 14 or later
// (which streams logical messages through pgoutput): then the WAL keeps what is written, for
// its reader, until the reader confirms it.
func logOnly(s *sqlstore.Store) sqlstore.LogOnlyHook {
	pub := baseName(s.QualifiedName())
	ready := "current_setting('server_version_num')::int >= 140000" +
		// Names are lower-case letters, digits and underscores: safe as literals.
		" AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE " + slotNamesSQL(s.QualifiedName()) + " AND database = current_database() AND restart_lsn IS NOT NULL)" +
		" AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '" + pub + "')"
	table := "'" + s.Table() + "'" // quoted identifiers, as a literal
	sequence := "(SELECT pg_get_serial_sequence(" + table + ", 'seq'))"
	return sqlstore.LogOnlyHook{
		Ready:    ready,
		NotReady: fmt.Sprintf("Postgres 14 or later, replication slot %s_<the first 8 hex digits of the MD5 of the database's name> (or %s, made before), of this database and not invalidated, and publication %s are needed: run Migrate on a server with wal_level = logical", pub, pub, pub),
		// One logical message per outbox message, in the order given (see logmessage.go).
		// The sequence, the prefix and the time are looked up once per statement.
		Emit: "SELECT pg_logical_emit_message(true, (SELECT 'outbox:' || " + table + "::regclass::oid)," +
			fmt.Sprintf(" '\\x%02x'::bytea", logMessageFormat) + " || int8send(nextval(" + sequence + "::regclass))" +
			" || int8send((SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::int8)) || m.msg)" +
			" FROM (SELECT msg FROM unnest($2::bytea[]) WITH ORDINALITY AS u(msg, i) ORDER BY i OFFSET 0) AS m" +
			" WHERE " + ready + " AND NOT EXISTS (SELECT 1 FROM " + s.Table() + " WHERE id = ANY($1::text[]))",
		Pack: packMessage,
		// nextval runs, and is refused, only where the role lacks the right.
		Rights:        "SELECT nextval(" + sequence + "::regclass) WHERE NOT has_sequence_privilege(" + sequence + ", 'USAGE')",
		KeepSeq:       "OVERRIDING SYSTEM VALUE",
		SkipConflicts: "ON CONFLICT DO NOTHING",
	}
}

// listen holds one connection in LISTEN and wakes on every notification. The connection is
// discarded afterwards rather than returned to the pool still listening.
func listen(ctx context.Context, t sqlstore.ListenerTarget, wake func()) error {
	conn, err := t.DB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("outbox: pgstore: connection is %T, not pgx's", dc)
		}
		pc := c.Conn()
		if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{t.Channel}.Sanitize()); err != nil {
			return fmt.Errorf("%w: listen: %w", driver.ErrBadConn, err)
		}
		wake() // notifications sent before LISTEN took effect are lost: look once now
		for {
			if _, err := pc.WaitForNotification(ctx); err != nil {
				return fmt.Errorf("%w: wait for notification: %w", driver.ErrBadConn, err)
			}
			wake()
		}
	})
}

// schema holds the outbox schema's steps, templates of the table's names: Migrate applies
// them, and migrations/ holds them for the default table, for your own migration tool.
//
//go:embed schema/*.sql
var schema embed.FS
