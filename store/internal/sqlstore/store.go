package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outboxgo/outbox/store"
)

// DefaultTable is the outbox table's default name.
const DefaultTable = store.DefaultTable

// Config configures a [Store].
type Config struct {
	// Table is the outbox table, optionally schema-qualified ("app.outbox"). Letters, digits
	// and underscores only. Defaults to DefaultTable.
	Table string
	// MaxPayloadBytes is the largest payload Write accepts. Defaults to
	// store.DefaultMaxPayloadBytes (1,000,000 bytes).
	MaxPayloadBytes int
	// Logger receives the store's logs (a lost notification listener). Defaults to
	// slog.Default().
	Logger *slog.Logger
	// LogOnly makes Write put each message in the change log alone (Postgres: a logical
	// decoding message of the writing transaction), so that the table is not touched: no
	// table growth, no row to mark delivered. Only stores whose change log can be checked at
	// write time allow it (Postgres; see pgstore). There is no polling fallback for such
	// messages: Write refuses them, with an error wrapping store.ErrLogUnavailable, while the
	// log cannot carry them. A message id is checked only against the table's rows and the
	// same Write: an id written twice in two Writes is published twice, for consumers to
	// drop.
	LogOnly bool
	// StrictOrder makes a parked message hold back the later messages of its key until an
	// operator requeues or deletes it, so that a key's messages are never published out of
	// order, not even past a message given up on. By default a parked message lets its key
	// move on: one message that cannot be published does not stop its key for good, and it
	// waits to be requeued on its own.
	StrictOrder bool
	// ManualLogRecovery leaves it to an operator to bring back a change log position that was
	// lost: a Postgres replication slot dropped, or invalidated by max_slot_wal_keep_size, or
	// a MySQL binlog position that the server purged. By default the log reader that finds it
	// lost says so (the dispatchers poll meanwhile: every undelivered message is still in the
	// table) and, at its next try, starts again from the log's current position: it creates
	// a new slot, or stores the server's current binlog position. The sweep then delivers
	// what was written in between, ahead of what the log carries, in each key's order. With
	// ManualLogRecovery the dispatchers poll until an operator runs Migrate (Postgres) or
	// deletes the stored position (MySQL). A log-only store (LogOnly) always leaves it to the
	// operator: the messages a lost slot held are in no table.
	ManualLogRecovery bool
}

// Listener waits for notifications that messages were written, from any process, and calls
// wake for each; it returns when ctx ends or its connection fails (it is then called again
// after a backoff). A store package passes one to [New] when its database can notify.
type Listener func(ctx context.Context, t ListenerTarget, wake func()) error

// ListenerTarget tells a [Listener] what to listen to.
type ListenerTarget struct {
	DB *sql.DB
	// Channel is the Postgres notification channel that Write notifies.
	Channel string
}

// Hooks connect a [Store] to what only its database can do. A store package passes them to
// [New]; each may be nil.
type Hooks struct {
	// Listen waits for notifications of written messages from any process.
	Listen Listener
	// Migrate runs after the schema steps of [Store.Migrate], on the same connection and
	// under the same lock (Postgres creates its publication and replication slot there).
	Migrate func(ctx context.Context, s *Store, conn *sql.Conn) error
	// OpenLog opens the database's change log; see [store.LogReader]. Its stream filters
	// and records batches through [Store.FilterLog] and [Store.RecordLog].
	OpenLog func(ctx context.Context, s *Store, o store.LogOptions) (store.LogStream, error)
	// LogOnly lets [Config].LogOnly be set: it says how Write of s knows that the log will
	// carry what it writes.
	LogOnly func(s *Store) LogOnlyHook
	// Lock takes the table's lock for purpose on conn (migrating, claiming where claims take
	// turns, purging): waiting at most wait, or with wait 0 only if it is free. It returns its
	// release and whether it got the lock. Nil where one writer runs at a time (SQLite).
	Lock Locker
}

// Locker is a database's lock named after the table and a purpose; see [Hooks].Lock.
type Locker func(ctx context.Context, conn *sql.Conn, s *Store, purpose string, wait time.Duration) (unlock func(), ok bool, err error)

// LogOnlyHook tells Write of a log-only store whether the change log will carry its messages.
type LogOnlyHook struct {
	// Ready is a SQL condition, true while the log will carry a message written now (Postgres:
	// the outbox's replication slot exists and is valid). Write inserts only where it holds.
	Ready string
	// NotReady says what is missing when Ready is false.
	NotReady string
	// Emit is the statement that writes messages to the log alone, where Ready holds and
	// none of their ids is in the table, in the order given; it binds the ids and what Pack
	// made of each message, and reports each message it wrote as a row affected.
	Emit string
	// Pack is what Emit binds of one message, with its id and its encoded headers.
	Pack func(m *store.Message, id, headers string) []byte
	// Rights is a statement that fails where the role lacks a right that Emit needs beyond
	// the table's (Postgres: the sequence's); Check runs it.
	Rights string
	// KeepSeq and SkipConflicts are the clauses of an INSERT that puts a logged message
	// into the table under the seq it was written with, unless its row is there already:
	// recording does, for a log-only message that failed or was handed over to polling.
	KeepSeq, SkipConflicts string
}

// Store is the engine of an outbox table in a SQL database: it implements [store.Engine],
// [store.Notifier] and [store.LogReader] for a dispatcher. A database's package (pgstore,
// mysqlstore, sqlitestore) makes one and hands applications its [Outbox].
type Store struct {
	db       *sql.DB
	d        Dialect
	t        table
	maxBytes int
	now      func() time.Time
	log      *slog.Logger
	listener Listener
	hooks    Hooks
	logOnly  *LogOnlyHook // set when Config.LogOnly
	strict   bool         // Config.StrictOrder
	// manualLog is Config.ManualLogRecovery; lostLog what a log reader found lost (see
	// logreturn.go).
	manualLog bool
	lostLog   lostLog

	// catchUp is, while a log reader starts, the highest seq of the messages that were
	// pending when it began: the log may not carry them (written while the dispatchers
	// polled), so until they are delivered the reader hands the later messages of their keys
	// over to the sweep, which takes these first. 0: none; -1: not looked up yet in this
	// reading session.
	catchUp atomic.Int64
	// logLookups counts the log batches looked up row by row (see LogLookups).
	logLookups atomic.Int64
	// found is true after a claim that found messages: the next claim skips the cheap look
	// for a due message that keeps an idle outbox at one query per poll.
	found atomic.Bool
	// windowSize is how many of the oldest pending messages the next claim looks at, when
	// larger than its minimum (see windowOf in claim.go); sweepWindowSize the same for sweeps.
	windowSize, sweepWindowSize atomic.Int64
	// claimed holds the seqs of claimed messages until their outcome is recorded.
	claimed claimedSeqs

	mu           sync.Mutex
	subs         map[chan struct{}]struct{}
	stopListener func() // ends the listener goroutine and waits for it; nil when not running
}

var (
	_ store.Engine        = (*Store)(nil)
	_ store.Notifier      = (*Store)(nil)
	_ store.LeaseExtender = (*Store)(nil)
)

// New returns a store for the outbox table in db. It does not touch the database: call
// [Store.Migrate] to create the table, and [Store.Check] to verify it.
func New(db *sql.DB, d Dialect, cfg Config, hooks Hooks) (*Store, error) {
	if db == nil {
		return nil, errors.New("outbox: sqlstore.New: db is nil")
	}
	if d.Name == "" {
		return nil, errors.New("outbox: sqlstore.New: zero Dialect (use a store package's New)")
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	t, err := parseTable(d, cfg.Table)
	if err != nil {
		return nil, err
	}
	if cfg.MaxPayloadBytes < 0 {
		return nil, fmt.Errorf("outbox: Config.MaxPayloadBytes is negative (%d)", cfg.MaxPayloadBytes)
	}
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = store.DefaultMaxPayloadBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LogOnly && (hooks.LogOnly == nil || hooks.OpenLog == nil) {
		return nil, fmt.Errorf("outbox: Config.LogOnly: the %s store cannot check at write time that its change log carries messages (use Postgres)", d.Name)
	}
	s := &Store{
		db:       db,
		d:        d,
		t:        t,
		maxBytes: cfg.MaxPayloadBytes,
		now:      time.Now,
		log:      cfg.Logger.With(slog.String("component", "outbox.store"), slog.String("table", t.String())),
		listener: hooks.Listen,
		hooks:    hooks,
		strict:   cfg.StrictOrder,
		subs:     make(map[chan struct{}]struct{}),
	}
	s.manualLog = cfg.ManualLogRecovery
	if cfg.LogOnly {
		h := hooks.LogOnly(s)
		s.logOnly = &h
	}
	return s, nil
}

// DB is the database handle the store was made with.
func (s *Store) DB() *sql.DB { return s.db }

// Table is the quoted, qualified outbox table name, for your own queries.
func (s *Store) Table() string { return s.t.String() }

// Capabilities implements [store.Engine].
func (s *Store) Capabilities() store.Capabilities {
	return store.Capabilities{Name: s.d.Name, SkipLocked: s.d.Claims != ClaimsOneWriter, CrossProcessNotify: s.listener != nil,
		ChangeLog: s.hooks.OpenLog != nil}
}

const columns = "seq, id, topic, message_key, payload, headers, created_at, state, attempts, next_attempt_at, claimed_until, claim_token, last_error, delivered_at"

// Check implements [store.Engine]. Besides reading the table, it probes the INSERT, UPDATE and
// DELETE rights the store needs, in a transaction it rolls back.
func (s *Store) Check(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("outbox: cannot reach the %s database: %w", s.d.Name, err)
	}
	t := s.t.String()
	probes := []string{
		"SELECT " + columns + ", held FROM " + t + " WHERE 1 = 0",
		"INSERT INTO " + t + " (id, topic, payload, headers, created_at) SELECT id, topic, payload, headers, created_at FROM " + t + " WHERE 1 = 0",
		"UPDATE " + t + " SET state = state WHERE 1 = 0",
		"DELETE FROM " + t + " WHERE 1 = 0",
	}
	needs := "SELECT, INSERT, UPDATE and DELETE"
	if s.logOnly != nil && s.logOnly.Rights != "" {
		probes = append(probes, s.logOnly.Rights)
		needs += ", and for log-only writes USAGE on its sequence"
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: cannot reach the %s database: %w", s.d.Name, err)
	}
	defer tx.Rollback()
	for _, q := range probes {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			switch kind := s.d.Classify(err); kind {
			case store.ErrNotMigrated:
				return fmt.Errorf("%w: table %s: %v (run Migrate, or the migration files, first)", kind, s.t, err)
			case store.ErrPermission:
				return fmt.Errorf("%w: table %s needs %s: %v", kind, s.t, needs, err)
			}
			return fmt.Errorf("outbox: check table %s: %w", s.t, err)
		}
	}
	return s.checkLogOnly(ctx, tx)
}

// checkLogOnly returns an error wrapping store.ErrLogUnavailable when the store is log-only
// and its change log would not carry a message written now.
func (s *Store) checkLogOnly(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) error {
	if s.logOnly == nil {
		return nil
	}
	var ready bool
	if err := db.QueryRowContext(ctx, "SELECT "+s.logOnly.Ready).Scan(&ready); err != nil {
		return fmt.Errorf("outbox: check the change log of log-only table %s: %w", s.t, err)
	}
	if !ready {
		return store.LogUnavailable("log-only table %s: %s", s.t, s.logOnly.NotReady)
	}
	return nil
}

// inChunks calls f with consecutive parts of vs, each at most size long.
func inChunks[T any](vs []T, size int, f func([]T) error) error {
	for start := 0; start < len(vs); start += size {
		if err := f(vs[start:min(start+size, len(vs))]); err != nil {
			return err
		}
	}
	return nil
}

// LockKey is the Postgres advisory lock key for purpose, one per outbox table.
func (s *Store) LockKey(purpose string) int64 { return s.t.lockKey(purpose) }

// Schema is the table's schema (Postgres) or database (MySQL) as configured; empty when the
// table name is not qualified.
func (s *Store) Schema() string { return s.t.schema }

// QualifiedName is the table's unquoted name, schema-qualified as configured.
func (s *Store) QualifiedName() string {
	if s.t.schema != "" {
		return s.t.schema + "." + s.t.name
	}
	return s.t.name
}

// TableName is the table's unquoted name without its schema.
func (s *Store) TableName() string { return s.t.name }

// Logger is the store's logger.
func (s *Store) Logger() *slog.Logger { return s.log }

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }
