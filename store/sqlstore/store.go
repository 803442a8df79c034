package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/outboxgo/outbox/store"
)

// DefaultTable is the outbox table's default name.
const DefaultTable = "outbox"

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
	// LogOnly makes Write insert each message and delete it again in the same transaction,
	// so that the table stays empty and the change log alone carries the message: no table
	// growth, no row to mark delivered. Only stores whose change log can be checked at write
	// time allow it (Postgres; see pgstore). There is no polling fallback for such messages:
	// Write refuses them, with an error wrapping store.ErrLogUnavailable, while the log
	// cannot carry them. Nor is a message id checked against earlier messages, whose rows
	// are gone: an id written twice is published twice, for consumers to drop.
	LogOnly bool
	// StrictOrder makes a parked message hold back the later messages of its key until an
	// operator requeues or deletes it, so that a key's messages are never published out of
	// order, not even past a message given up on. By default a parked message lets its key
	// move on: one message that cannot be published does not stop its key for good, and it
	// waits to be requeued on its own.
	StrictOrder bool
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
	// ReadLog reads the database's change log; see [store.LogReader].
	ReadLog func(ctx context.Context, s *Store, c store.LogConsumer) error
	// LogOnly lets [Config].LogOnly be set: it says how Write of s knows that the log will
	// carry what it writes.
	LogOnly func(s *Store) LogOnlyHook
}

// LogOnlyHook tells Write of a log-only store whether the change log will carry its messages.
type LogOnlyHook struct {
	// Ready is a SQL condition, true while the log will carry a message written now (Postgres:
	// the outbox's replication slot exists and is valid). Write inserts only where it holds.
	Ready string
	// NotReady says what is missing when Ready is false.
	NotReady string
}

// Store is an outbox table in a SQL database. It implements [store.Store] and
// [store.Notifier]. Create one with a database's constructor package, such as sqlitestore.
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

	mu           sync.Mutex
	subs         map[chan struct{}]struct{}
	stopListener func() // ends the listener goroutine and waits for it; nil when not running
}

var (
	_ store.Store         = (*Store)(nil)
	_ store.Notifier      = (*Store)(nil)
	_ store.LeaseExtender = (*Store)(nil)
)

// New returns a store for the outbox table in db. It does not touch the database: call
// [Store.Migrate] to create the table, and [Store.Check] to verify it.
func New(db *sql.DB, d Dialect, cfg Config, hooks Hooks) (*Store, error) {
	if db == nil {
		return nil, errors.New("outbox: sqlstore.New: db is nil")
	}
	if d.name == "" {
		return nil, errors.New("outbox: sqlstore.New: zero Dialect (use sqlstore.SQLite() or a store package's New)")
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
	if cfg.LogOnly && (hooks.LogOnly == nil || hooks.ReadLog == nil) {
		return nil, fmt.Errorf("outbox: Config.LogOnly: the %s store cannot check at write time that its change log carries messages (use Postgres)", d.name)
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

// Capabilities implements [store.Store].
func (s *Store) Capabilities() store.Capabilities {
	return store.Capabilities{Name: s.d.name, SkipLocked: s.d.claim != claimSingleStatement, CrossProcessNotify: s.listener != nil,
		ChangeLog: s.hooks.ReadLog != nil}
}

const columns = "seq, id, topic, message_key, payload, headers, created_at, state, attempts, next_attempt_at, claimed_until, claim_token, last_error, delivered_at"

// Check implements [store.Store]. Besides reading the table, it probes the INSERT, UPDATE and
// DELETE rights the store needs, in a transaction it rolls back.
func (s *Store) Check(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("outbox: cannot reach the %s database: %w", s.d.name, err)
	}
	t := s.t.String()
	probes := []string{
		"SELECT " + columns + ", held FROM " + t + " WHERE 1 = 0",
		"INSERT INTO " + t + " (id, topic, payload, headers, created_at) SELECT id, topic, payload, headers, created_at FROM " + t + " WHERE 1 = 0",
		"UPDATE " + t + " SET state = state WHERE 1 = 0",
		"DELETE FROM " + t + " WHERE 1 = 0",
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: cannot reach the %s database: %w", s.d.name, err)
	}
	defer tx.Rollback()
	for _, q := range probes {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			switch kind := s.d.classify(err); kind {
			case store.ErrNotMigrated:
				return fmt.Errorf("%w: table %s: %v (run Migrate, or the migration files, first)", kind, s.t, err)
			case store.ErrPermission:
				return fmt.Errorf("%w: table %s needs SELECT, INSERT, UPDATE and DELETE: %v", kind, s.t, err)
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

// Migrations returns the schema steps for the configured table, for use with your own
// migration tool. [Store.Migrate] applies them.
func (s *Store) Migrations() ([]Migration, error) { return s.d.migrations(s.t) }

// Migrate creates or upgrades the outbox table. It records applied steps in a table named
// after the outbox table with a "_migrations" suffix, and is safe to run at every start. It
// uses its own connection and transactions: never call it inside a transaction of yours.
func (s *Store) Migrate(ctx context.Context) error {
	steps, err := s.Migrations()
	if err != nil {
		return err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	defer conn.Close()
	unlock, err := s.lockSession(ctx, conn, "migrate", time.Minute)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	defer unlock()

	versions := s.t.Related("migrations")
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+versions+
		" (version INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"); err != nil {
		return fmt.Errorf("outbox: migrate: create %s: %w", versions, err)
	}
	applied := map[int]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT version FROM "+versions)
	if err != nil {
		return fmt.Errorf("outbox: migrate: read %s: %w", versions, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, m := range steps {
		if applied[m.Version] {
			continue
		}
		if err := s.apply(ctx, conn, versions, m); err != nil {
			return fmt.Errorf("outbox: migrate: step %d (%s): %w", m.Version, m.Name, err)
		}
	}
	if s.hooks.Migrate != nil {
		if err := s.hooks.Migrate(ctx, s, conn); err != nil {
			return fmt.Errorf("outbox: migrate: %w", err)
		}
	}
	if err := s.checkLogOnly(ctx, conn); err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	return nil
}

// apply runs one step in a transaction (MySQL commits DDL at once; its steps are written to be
// safe to run again).
func (s *Store) apply(ctx context.Context, conn *sql.Conn, versions string, m Migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, stmt := range splitStatements(m.SQL) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	b := builder{d: s.d}
	q := "INSERT INTO " + versions + " (version, name) VALUES (" + b.arg(m.Version) + ", " + b.arg(m.Name) + ")"
	if _, err := tx.ExecContext(ctx, q, b.args...); err != nil {
		return err
	}
	return tx.Commit()
}

// lockSession takes a lock named after the table and purpose on conn, waiting at most wait,
// and returns its release. SQLite needs none: it runs one writer at a time.
func (s *Store) lockSession(ctx context.Context, conn *sql.Conn, purpose string, wait time.Duration) (func(), error) {
	switch s.d.claim {
	case claimAdvisoryLock:
		key := s.t.lockKey(purpose)
		lctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		if _, err := conn.ExecContext(lctx, "SELECT pg_advisory_lock($1)", key); err != nil {
			return nil, fmt.Errorf("take lock %s: %w", purpose, err)
		}
		return func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, err := conn.ExecContext(uctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
				discard(conn)
			}
		}, nil
	case claimNamedLock:
		expr, name := s.t.lockName(purpose)
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK("+expr+", ?)", name, int(wait.Seconds())).Scan(&got); err != nil {
			return nil, fmt.Errorf("take lock %s: %w", name, err)
		}
		if got.Int64 != 1 {
			return nil, fmt.Errorf("take lock %s: not granted within %v", name, wait)
		}
		return func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, err := conn.ExecContext(uctx, "SELECT RELEASE_LOCK("+expr+")", name); err != nil {
				discard(conn)
			}
		}, nil
	}
	return func() {}, nil
}

// discard makes database/sql close conn instead of reusing it, so that a session lock or a
// LISTEN it may still hold dies with it.
func discard(conn *sql.Conn) {
	conn.Raw(func(any) error { return driver.ErrBadConn })
}

// splitStatements splits a migration into statements at semicolons that end a line, dropping
// comment-only parts.
func splitStatements(sqlText string) []string {
	var out []string
	for _, part := range strings.Split(sqlText, ";\n") {
		var code []string
		for _, line := range strings.Split(part, "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "--") {
				code = append(code, line)
			}
		}
		if stmt := strings.TrimSuffix(strings.TrimSpace(strings.Join(code, "\n")), ";"); stmt != "" {
			out = append(out, stmt)
		}
	}
	return out
}

// unwrap returns the database/sql handle under a bun handle, so that Write binds its
// arguments natively instead of having bun inline them.
func unwrap(db store.Execer) store.Execer {
	switch v := db.(type) {
	case bun.Tx:
		if v.Tx != nil {
			return v.Tx
		}
	case *bun.Tx:
		if v != nil && v.Tx != nil {
			return v.Tx
		}
	case *bun.DB:
		if v != nil {
			return v.DB
		}
	case bun.Conn:
		if v.Conn != nil {
			return v.Conn
		}
	}
	return db
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch v := v.(type) {
	case bun.Tx:
		return v.Tx == nil
	case bun.Conn:
		return v.Conn == nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Func, reflect.Chan, reflect.Slice:
		return rv.IsNil()
	}
	return false
}

const writeColumns = 5

// Write implements [store.Store]. When ctx carries a span, each message also stores its trace
// context (the traceparent and tracestate headers), unless it has a traceparent of its own.
func (s *Store) Write(ctx context.Context, db store.Execer, msgs ...store.Message) error {
	if isNil(db) {
		return store.ErrNilTx
	}
	if len(msgs) == 0 {
		return nil
	}
	ids := make([]string, len(msgs))
	headers := make([]string, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if err := m.Validate(s.maxBytes); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		h, err := store.EncodeHeaders(store.WithTraceContext(ctx, m.Headers))
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		headers[i] = h
		ids[i] = m.ID
		if ids[i] == "" {
			ids[i] = store.NewID()
		}
	}
	db = unwrap(db)
	for start, end := 0, 0; start < len(msgs); start = end {
		end = s.statementEnd(msgs, start)
		if s.logOnly != nil {
			if err := s.writeLogOnly(ctx, db, msgs[start:end], ids[start:end], headers[start:end]); err != nil {
				return err
			}
			continue
		}
		b := builder{d: s.d, args: make([]any, 0, (end-start)*writeColumns)}
		var q strings.Builder
		// created_at comes from the database's clock, as it does for plain-SQL writers. A new
		// message is due at once: next_attempt_at keeps its default until a failure sets it.
		q.WriteString("INSERT INTO " + s.t.String() + " (id, topic, message_key, payload, headers, created_at) VALUES ")
		for i := start; i < end; i++ {
			if i > start {
				q.WriteByte(',')
			}
			fmt.Fprintf(&q, "(%s,%s,%s,%s,%s,%s)", b.arg(ids[i]), b.arg(msgs[i].Topic), b.arg(msgs[i].Key),
				b.arg(payloadArg(msgs[i].Payload)), b.arg(headers[i]), s.d.now)
		}
		if err := s.insert(ctx, db, q.String(), &b, end-start); err != nil {
			// Nothing of this Write stays: the statements before wrote all their messages.
			if derr := s.unwrite(ctx, db, ids[:start]); derr != nil {
				return errors.Join(err, derr)
			}
			return err
		}
	}
	if s.logOnly == nil {
		s.signal()
	}
	return nil
}

// insert runs one INSERT of n messages. An id already in the outbox fails it with
// store.ErrDuplicateID, and a missing table with store.ErrNotMigrated. MySQL and SQLite undo
// just the failed statement; Postgres would abort the caller's transaction, so there the
// statement skips conflicting ids, and the rows it did insert are deleted again.
func (s *Store) insert(ctx context.Context, db store.Execer, stmt string, b *builder, n int) error {
	fail := func(err error) error {
		if kind := s.d.classify(err); kind != nil {
			return fmt.Errorf("%w: write %d messages to %s: %v", kind, n, s.t, err)
		}
		return fmt.Errorf("outbox: write %d messages to %s: %w", n, s.t, err)
	}
	q, canQuery := db.(interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	})
	if !s.d.notify || !canQuery {
		if _, err := db.ExecContext(ctx, stmt, b.args...); err != nil {
			return fail(err)
		}
		return nil
	}
	// Postgres delivers the notification when the caller's transaction commits, once per
	// channel and transaction however many statements sent it.
	stmt = "WITH written AS (" + stmt + " ON CONFLICT (id) DO NOTHING RETURNING seq) SELECT count(*), coalesce(string_agg(seq::text, ','), ''), pg_notify(" +
		b.arg(s.t.channel()) + ", '') FROM written"
	var (
		written int
		seqs    string
		notify  any
	)
	if err := q.QueryRowContext(ctx, stmt, b.args...).Scan(&written, &seqs, &notify); err != nil {
		return fail(err)
	}
	if written == n {
		return nil
	}
	if seqs != "" {
		if _, err := db.ExecContext(ctx, "DELETE FROM "+s.t.String()+" WHERE seq IN ("+seqs+")"); err != nil {
			return fmt.Errorf("outbox: write %d messages to %s: undo: %w", n, s.t, err)
		}
	}
	return fmt.Errorf("%w: write %d messages to %s: %d of their ids are taken", store.ErrDuplicateID, n, s.t, n-written)
}

// unwrite deletes the messages ids written by the earlier statements of a failed Write.
func (s *Store) unwrite(ctx context.Context, db store.Execer, ids []string) error {
	return s.inChunks(ids, func(ids []string) error {
		b := builder{d: s.d}
		if _, err := db.ExecContext(ctx, "DELETE FROM "+s.t.String()+" WHERE "+b.in("id", ids), b.args...); err != nil {
			return fmt.Errorf("outbox: undo a failed write to %s: %w", s.t, err)
		}
		return nil
	})
}

func payloadArg(p []byte) []byte {
	if p == nil {
		return []byte{}
	}
	return p
}

// writeLogOnly inserts msgs in the log-only state, where the change log will carry them, and
// deletes them again: the log keeps the inserted rows, the table does not. The reader tells
// them by their state. The casts are Postgres's, the one database that allows log-only
// writes.
func (s *Store) writeLogOnly(ctx context.Context, db store.Execer, msgs []store.Message, ids, headers []string) error {
	b := builder{d: s.d, args: make([]any, 0, len(msgs)*writeColumns)}
	var q strings.Builder
	q.WriteString("INSERT INTO " + s.t.String() + " (id, topic, message_key, payload, headers, created_at, state) SELECT * FROM (VALUES ")
	for i := range msgs {
		if i > 0 {
			q.WriteByte(',')
		}
		fmt.Fprintf(&q, "(%s::text,%s::text,%s::text,%s::bytea,%s::text,%s,'%s')", b.arg(ids[i]), b.arg(msgs[i].Topic), b.arg(msgs[i].Key),
			b.arg(payloadArg(msgs[i].Payload)), b.arg(headers[i]), s.d.now, LogOnlyState)
	}
	q.WriteString(") AS written WHERE " + s.logOnly.Ready)
	res, err := db.ExecContext(ctx, q.String(), b.args...)
	if err != nil {
		return fmt.Errorf("outbox: write %d log-only messages to %s: %w", len(msgs), s.t, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(msgs)) {
		return store.LogUnavailable("log-only write of %d messages to %s refused, as the log would not carry them: %s", len(msgs), s.t, s.logOnly.NotReady)
	}
	d := builder{d: s.d, args: make([]any, 0, len(msgs))}
	if _, err := db.ExecContext(ctx, "DELETE FROM "+s.t.String()+" WHERE "+d.in("id", ids)+" AND state = '"+LogOnlyState+"'", d.args...); err != nil {
		return fmt.Errorf("outbox: write %d log-only messages to %s: delete the rows: %w", len(msgs), s.t, err)
	}
	return nil
}

// LogOnlyState is the state of a row that Write of a log-only store inserts and deletes at
// once: only the change log sees it, and the log reader tells log-only messages by it.
const LogOnlyState = "logged"

// statementEnd is where the INSERT that starts at msgs[start] ends: within the database's
// parameter limit, and within maxStatementBytes of payload unless one message is larger alone.
func (s *Store) statementEnd(msgs []store.Message, start int) int {
	end, size := start, 0
	for end < len(msgs) && end-start < (s.d.maxParams-1)/writeColumns {
		size += len(msgs[end].Payload)
		if end > start && size > maxStatementBytes {
			break
		}
		end++
	}
	return end
}

// maxStatementBytes keeps an INSERT of many messages below MySQL's default packet limit.
const maxStatementBytes = 4 << 20

// Subscribe implements [store.Notifier]. It hears messages written through this Store value,
// and, where the database can notify (Postgres), messages written by any process.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	if s.listener != nil && s.stopListener == nil {
		s.stopListener = s.startListener()
	}
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, ch)
			var stop func()
			if len(s.subs) == 0 {
				stop, s.stopListener = s.stopListener, nil
			}
			s.mu.Unlock()
			if stop != nil {
				stop()
			}
		})
	}
}

// startListener runs the listener until the returned function is called, restarting it with a
// backoff when its connection fails. Each (re)start wakes the subscribers, since
// notifications sent while it was not listening are lost.
func (s *Store) startListener() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait := time.Duration(0)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			err := s.listener(ctx, ListenerTarget{DB: s.db, Channel: s.t.channel()}, s.signal)
			if ctx.Err() != nil {
				return
			}
			wait = min(max(2*wait, 100*time.Millisecond), 10*time.Second)
			s.log.Warn("notification listener stopped; dispatchers poll until it is back",
				slog.Any("error", err), slog.Duration("retry_in", wait))
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// signal wakes every subscriber without blocking; pending signals coalesce.
func (s *Store) signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Claim implements [store.Store].
func (s *Store) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("outbox: ClaimParams.Limit must be positive, got %d", p.Limit)
	}
	if p.Lease <= 0 {
		return nil, fmt.Errorf("outbox: ClaimParams.Lease must be positive, got %v", p.Lease)
	}
	if len(p.Token) > 36 {
		return nil, fmt.Errorf("outbox: ClaimParams.Token must be at most 36 characters, got %d", len(p.Token))
	}
	var (
		res = &store.ClaimResult{Token: cmp.Or(p.Token, uuid.NewString())}
		got []claimedRow
		err error
	)
	switch s.d.claim {
	case claimSingleStatement:
		got, err = s.claimOnce(ctx, s.db, res.Token, p)
	default:
		got, err = s.claimLocked(ctx, res.Token, p)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: claim from %s: %w", s.t, err)
	}
	slices.SortFunc(got, func(a, b claimedRow) int { return cmp.Compare(a.seq, b.seq) })
	res.Messages = make([]store.ClaimedMessage, len(got))
	for i, r := range got {
		res.Messages[i] = r.m
	}
	return res, nil
}

type claimedRow struct {
	seq int64
	m   store.ClaimedMessage
}

// sweepOnly is the extra condition of a sweep's claim (ClaimParams.OlderThan): messages
// written at least OlderThan ago by the database's clock, and those a log reader handed
// over, which are held.
func (s *Store) sweepOnly(b *builder, p *store.ClaimParams) string {
	if p.OlderThan <= 0 {
		return ""
	}
	return " AND (o.created_at < " + b.nowPlus(-p.OlderThan) + " OR o.held = 1)"
}

// due is the condition, on the table aliased o, of a pending message that nothing holds back
// by itself: no live claim holds it, and it never failed or its retry time has come. A
// message that never failed is due whatever its next_attempt_at says, so that no writer's
// clock can make it wait while a later message of its key goes ahead. The times compared
// are the database's.
func (s *Store) due(alias string) string {
	return alias + ".state = 'pending' AND " + alias + ".claimed_until <= " + s.d.now +
		" AND (" + alias + ".attempts = 0 OR " + alias + ".next_attempt_at <= " + s.d.now + ")"
}

// claimable is the condition, on the table aliased o, of a message that may be claimed: it
// is due, and no earlier message of its key is pending and not due. The earlier pending
// messages of the key are found through the "pending_key" index; in a backlog they are few,
// as a claim reads from the oldest. Earlier messages of the key that are due have lower seq
// and so come first within a claim's LIMIT. No index covers what a claim changes, so that
// Postgres updates claimed rows in place.
func (s *Store) claimable(b *builder, p *store.ClaimParams) string {
	return s.due("o") + s.sweepOnly(b, p) +
		" AND (o.message_key = '' OR NOT EXISTS (SELECT 1 FROM " + s.t.String() + " e WHERE e.message_key = o.message_key" +
		" AND e.state = 'pending' AND e.seq < o.seq" +
		" AND (e.claimed_until > " + s.d.now + " OR (e.attempts > 0 AND e.next_attempt_at > " + s.d.now + ")))" + s.parkedHolds("o") + ")"
}

// parkedHolds is, with Config.StrictOrder, the condition that no earlier message of the
// key of the message aliased alias is parked (the "parked_key" index covers them).
func (s *Store) parkedHolds(alias string) string {
	if !s.strict {
		return ""
	}
	return " AND NOT EXISTS (SELECT 1 FROM " + s.t.String() + " pk WHERE pk.message_key = " + alias + ".message_key" +
		" AND pk.state = 'parked' AND pk.seq < " + alias + ".seq)"
}

const claimedColumns = "seq, id, topic, message_key, payload, headers, created_at, attempts"

// claimOnce claims with one UPDATE ... RETURNING. Alone it is atomic only where one writer
// runs at a time (SQLite); Postgres runs it under the claim lock.
func (s *Store) claimOnce(ctx context.Context, db store.Querier, token string, p *store.ClaimParams) ([]claimedRow, error) {
	b := builder{d: s.d}
	t := s.t.String()
	q := "UPDATE " + t + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease)
	sub := "SELECT o.seq FROM " + t + " o WHERE " + s.claimable(&b, p) + " ORDER BY o.seq LIMIT " + b.arg(p.Limit)
	if s.d.claim == claimSingleStatement {
		q += " WHERE seq IN (" + sub + ")"
	} else {
		// = ANY(ARRAY(...)) keeps Postgres on the primary key; IN (...) becomes a hash join
		// over the whole table.
		q += " WHERE seq = ANY(ARRAY(" + sub + " FOR UPDATE SKIP LOCKED))"
	}
	q += " RETURNING " + claimedColumns
	rows, err := db.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, err
	}
	return scanClaimed(rows)
}

func scanClaimed(rows *sql.Rows) ([]claimedRow, error) {
	defer rows.Close()
	var got []claimedRow
	for rows.Next() {
		var (
			r       claimedRow
			headers string
			created timeValue
			err     error
		)
		if err := rows.Scan(&r.seq, &r.m.ID, &r.m.Topic, &r.m.Key, &r.m.Payload, &headers, &created, &r.m.Attempts); err != nil {
			return nil, err
		}
		if r.m.Headers, err = store.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %s: %w", r.m.ID, err)
		}
		r.m.CreatedAt = created.t
		got = append(got, r)
	}
	return got, rows.Err()
}

// claimLocked claims where several processes claim at once (Postgres, MySQL). Claims take
// turns through a lock named after the table, held for the few milliseconds a claim takes:
// each claim then sees every earlier claim committed, which keeps the messages of a key in
// order across dispatchers. Postgres claims skip locked rows (FOR UPDATE SKIP LOCKED) rather
// than wait on rows that other dispatchers are marking; MySQL claims read without locks (see
// claimNamed). A cheap look first keeps an idle outbox at one query per poll;
// its ORDER BY has the planner read the pending index from its head, not all of it.
func (s *Store) claimLocked(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	b := builder{d: s.d}
	var one int
	err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.t.String()+" o WHERE "+s.due("o")+s.sweepOnly(&b, p)+
		" ORDER BY o.seq LIMIT 1", b.args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.d.claim == claimAdvisoryLock {
		return s.claimAdvisory(ctx, token, p)
	}
	return s.claimNamed(ctx, token, p)
}

func (s *Store) claimAdvisory(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// The lock is released at commit; the UPDATE below takes its snapshot after it is granted.
	// The commit need not wait for the WAL flush: a claim lost in a server crash only makes
	// its messages claimable again. The claim walks the pending index in seq order and stops
	// at its LIMIT; statistics taken while few messages were pending (a backlog grows faster
	// than autovacuum analyzes) would have the planner read every pending row and sort them,
	// on every claim: so bitmap and sequential scans are off for this transaction.
	if _, err := tx.ExecContext(ctx, "SELECT set_config('synchronous_commit', 'off', true), set_config('enable_bitmapscan', 'off', true), "+
		"set_config('enable_seqscan', 'off', true), pg_advisory_xact_lock($1)", s.t.lockKey("claim")); err != nil {
		return nil, err
	}
	got, err := s.claimOnce(ctx, tx, token, p)
	if err != nil {
		return nil, err
	}
	return got, tx.Commit()
}

func (s *Store) claimNamed(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	unlock, err := s.lockSession(ctx, conn, "claim", 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// READ COMMITTED: each statement sees the claims committed before the lock was granted.
	// The messages are chosen by a plain read, not a locking one: SKIP LOCKED would pass over
	// an earlier message of a key that a statement of another session has locked (MySQL
	// locks every row an UPDATE scans) and claim a later one, out of order; a locking read
	// without it would wait for the application's transactions that insert messages. The
	// UPDATE then claims exactly those rows, if no other session changed one meanwhile.
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	b := builder{d: s.d}
	q := "SELECT " + claimedColumns + " FROM " + s.t.String() + " o WHERE " + s.claimable(&b, p) +
		" ORDER BY o.seq LIMIT " + b.arg(p.Limit)
	rows, err := tx.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, err
	}
	got, err := scanClaimed(rows)
	if err != nil || len(got) == 0 {
		return nil, err
	}
	seqs := make([]string, len(got))
	for i, r := range got {
		seqs[i] = strconv.FormatInt(r.seq, 10)
	}
	b = builder{d: s.d}
	upd := "UPDATE " + s.t.String() + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease)
	upd += " WHERE seq IN (" + strings.Join(seqs, ",") + ") AND state = 'pending' AND claimed_until <= " + s.d.now
	res, err := tx.ExecContext(ctx, upd, b.args...)
	if err != nil {
		return nil, err
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(got)) {
		// A message changed between the read and the UPDATE (an operator, a log reader
		// marking it): claim nothing this time rather than a batch with a gap.
		return nil, err
	}
	return got, tx.Commit()
}

// MarkDelivered implements [store.Store].
func (s *Store) MarkDelivered(ctx context.Context, p *store.MarkDeliveredParams) error {
	return s.inChunks(p.IDs, func(ids []string) error {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET state = 'delivered', delivered_at = " + s.d.now +
			", claim_token = NULL, claimed_until = " + s.d.epoch + s.d.asyncCommit + " WHERE state = 'pending' AND " + b.in("id", ids)
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: mark %d messages delivered in %s: %w", len(ids), s.t, err)
		}
		return nil
	})
}

// Release implements [store.Store].
func (s *Store) Release(ctx context.Context, p *store.ReleaseParams) error {
	if p.All {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET claim_token = NULL, claimed_until = " + s.d.epoch + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token)
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: release the messages of a claim in %s: %w", s.t, err)
		}
		return nil
	}
	return s.inChunks(p.IDs, func(ids []string) error {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET claim_token = NULL, claimed_until = " + s.d.epoch + " WHERE claim_token = " + b.arg(p.Token) +
			" AND " + b.in("id", ids)
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: release %d messages in %s: %w", len(ids), s.t, err)
		}
		return nil
	})
}

// ExtendLease implements [store.LeaseExtender].
func (s *Store) ExtendLease(ctx context.Context, p *store.ExtendLeaseParams) (int64, error) {
	if p.Lease <= 0 {
		return 0, fmt.Errorf("outbox: ExtendLeaseParams.Lease must be positive, got %v", p.Lease)
	}
	b := builder{d: s.d}
	q := "UPDATE " + s.t.String() + " SET claimed_until = " + b.nowPlus(p.Lease) + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token)
	res, err := s.db.ExecContext(ctx, q, b.args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: extend the lease of a claim in %s: %w", s.t, err)
	}
	return res.RowsAffected()
}

func (s *Store) inChunks(ids []string, f func([]string) error) error {
	return inChunks(ids, s.d.maxParams-8, f)
}

// Fail implements [store.Store]. All failures are recorded in one transaction.
func (s *Store) Fail(ctx context.Context, p *store.FailParams) error {
	if len(p.Failures) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: record failures in %s: %w", s.t, err)
	}
	defer tx.Rollback()
	for _, f := range p.Failures {
		b := builder{d: s.d}
		state := store.Pending
		if f.Park {
			state = store.Parked
		}
		q := "UPDATE " + s.t.String() + " SET attempts = attempts + 1, state = " + b.arg(string(state)) +
			", last_error = " + b.arg(f.Error) + ", next_attempt_at = " + b.nowPlus(f.RetryAfter) +
			", claim_token = NULL, claimed_until = " + s.d.epoch + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token) +
			" AND id = " + b.arg(f.ID)
		if _, err := tx.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: record failure of %s in %s: %w", f.ID, s.t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: record failures in %s: %w", s.t, err)
	}
	return nil
}

// List implements [store.Store].
func (s *Store) List(ctx context.Context, p *store.ListParams) (*store.ListResult, error) {
	var db store.Querier = s.db
	if !isNil(p.DB) {
		db = unwrapQuerier(p.DB)
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	b := builder{d: s.d}
	var where []string
	if p.State != "" {
		where = append(where, "state = "+b.arg(string(p.State)))
	}
	if p.Topic != "" {
		where = append(where, "topic = "+b.arg(p.Topic))
	}
	if p.Key != "" {
		where = append(where, "message_key = "+b.arg(p.Key))
	}
	q := "SELECT " + columns + " FROM " + s.t.String()
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq LIMIT " + b.arg(limit)
	rows, err := db.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
	}
	defer rows.Close()
	res := &store.ListResult{}
	for rows.Next() {
		var (
			m                                     store.StoredMessage
			seq                                   int64
			headers, state                        string
			created, next, claimedUntil, delivery timeValue
			token, lastErr                        sql.NullString
		)
		if err := rows.Scan(&seq, &m.ID, &m.Topic, &m.Key, &m.Payload, &headers, &created, &state, &m.Attempts,
			&next, &claimedUntil, &token, &lastErr, &delivery); err != nil {
			return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
		}
		if m.Headers, err = store.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %s: %w", m.ID, err)
		}
		m.CreatedAt, m.NextAttemptAt, m.DeliveredAt = created.t, next.t, delivery.t
		m.State, m.LastError = store.State(state), lastErr.String
		res.Messages = append(res.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
	}
	return res, nil
}

func unwrapQuerier(db store.Querier) store.Querier {
	if e, ok := db.(store.Execer); ok {
		if q, ok := unwrap(e).(store.Querier); ok {
			return q
		}
	}
	return db
}

// timeValue scans a time stored natively, as text (MySQL without parseTime) or as integer unix
// microseconds (SQLite). NULL and the epoch scan as the zero time.
type timeValue struct{ t time.Time }

func (v *timeValue) Scan(src any) error {
	switch x := src.(type) {
	case nil:
		v.t = time.Time{}
	case int64:
		if x == 0 {
			v.t = time.Time{}
		} else {
			v.t = time.UnixMicro(x).UTC()
		}
	case time.Time:
		if x.Unix() <= 0 {
			v.t = time.Time{}
		} else {
			v.t = x.UTC()
		}
	case []byte:
		return v.Scan(string(x))
	case string: // MySQL without parseTime
		t, err := time.ParseInLocation("2006-01-02 15:04:05.999999", x, time.UTC)
		if err != nil {
			return fmt.Errorf("outbox: cannot scan %q as a time: %w", x, err)
		}
		return v.Scan(t)
	default:
		return fmt.Errorf("outbox: cannot scan %T as a time", src)
	}
	return nil
}
