package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"slices"
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
	// store.DefaultMaxPayloadBytes (1 MiB).
	MaxPayloadBytes int
}

// Store is an outbox table in a SQL database. It implements [store.Store] and
// [store.Notifier]. Create one with a database's constructor package, such as sqlitestore.
type Store struct {
	db       *sql.DB
	d        Dialect
	t        table
	maxBytes int
	now      func() time.Time

	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Notifier = (*Store)(nil)
)

// New returns a store for the outbox table in db. It does not touch the database: call
// [Store.Migrate] to create the table, and [Store.Check] to verify it.
func New(db *sql.DB, d Dialect, cfg Config) (*Store, error) {
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
	return &Store{
		db:       db,
		d:        d,
		t:        t,
		maxBytes: cfg.MaxPayloadBytes,
		now:      time.Now,
		subs:     make(map[chan struct{}]struct{}),
	}, nil
}

// DB is the database handle the store was made with.
func (s *Store) DB() *sql.DB { return s.db }

// Table is the quoted, qualified outbox table name, for your own queries.
func (s *Store) Table() string { return s.t.String() }

// Capabilities implements [store.Store].
func (s *Store) Capabilities() store.Capabilities {
	return store.Capabilities{Name: s.d.name, SkipLocked: s.d.skipLocked}
}

const columns = "seq, id, topic, message_key, payload, headers, created_at, state, attempts, next_attempt_at, claimed_until, claim_token, last_error, delivered_at"

// Check implements [store.Store].
func (s *Store) Check(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("outbox: cannot reach the %s database: %w", s.d.name, err)
	}
	rows, err := s.db.QueryContext(ctx, "SELECT "+columns+" FROM "+s.t.String()+" WHERE 1 = 0")
	if err != nil {
		return fmt.Errorf("%w: table %s: %v", store.ErrNotMigrated, s.t, err)
	}
	return rows.Close()
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
	versions := s.t.Related("migrations")
	if _, err := s.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+versions+
		" (version INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"); err != nil {
		return fmt.Errorf("outbox: migrate: create %s: %w", versions, err)
	}
	applied := map[int]bool{}
	rows, err := s.db.QueryContext(ctx, "SELECT version FROM "+versions)
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
		if err := s.apply(ctx, versions, m); err != nil {
			return fmt.Errorf("outbox: migrate: step %d (%s): %w", m.Version, m.Name, err)
		}
	}
	return nil
}

func (s *Store) apply(ctx context.Context, versions string, m Migration) error {
	tx, err := s.db.BeginTx(ctx, nil)
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

const writeColumns = 7

// Write implements [store.Store].
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
		h, err := store.EncodeHeaders(m.Headers)
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
	now := s.d.timeArg(s.now())
	perStatement := s.d.maxParams / writeColumns
	for start := 0; start < len(msgs); start += perStatement {
		end := min(start+perStatement, len(msgs))
		b := builder{d: s.d, args: make([]any, 0, (end-start)*writeColumns)}
		var q strings.Builder
		q.WriteString("INSERT INTO " + s.t.String() + " (id, topic, message_key, payload, headers, created_at, next_attempt_at) VALUES ")
		for i := start; i < end; i++ {
			if i > start {
				q.WriteByte(',')
			}
			payload := msgs[i].Payload
			if payload == nil {
				payload = []byte{}
			}
			fmt.Fprintf(&q, "(%s,%s,%s,%s,%s,%s,%s)", b.arg(ids[i]), b.arg(msgs[i].Topic), b.arg(msgs[i].Key),
				b.arg(payload), b.arg(headers[i]), b.arg(now), b.arg(now))
		}
		if _, err := db.ExecContext(ctx, q.String(), b.args...); err != nil {
			return fmt.Errorf("outbox: write %d messages to %s: %w", end-start, s.t, err)
		}
	}
	s.signal()
	return nil
}

// Subscribe implements [store.Notifier]. It hears messages written through this Store value.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
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
	token := uuid.NewString()
	now := s.now()
	b := builder{d: s.d}
	t := s.t.String()
	q := "UPDATE " + t + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.arg(s.d.timeArg(now.Add(p.Lease)))
	nowV := s.d.timeArg(now)
	// A message is due when it is pending, its retry time has come and no live claim holds it.
	// It is claimable when, besides, no earlier pending message of its key is held back (by a
	// retry time or another claim): earlier messages that are claimable themselves have lower
	// seq and so come first within the LIMIT. A held message has been claimed or has failed
	// (claimed_until > 0 OR attempts > 0), which the "held" partial index covers.
	q += " WHERE seq IN (SELECT o.seq FROM " + t + " o WHERE o.state = 'pending'" +
		" AND o.next_attempt_at <= " + b.arg(nowV) + " AND o.claimed_until <= " + b.arg(nowV) +
		" AND (o.message_key = '' OR NOT EXISTS (SELECT 1 FROM " + t + " e WHERE e.message_key = o.message_key" +
		" AND e.seq < o.seq AND e.state = 'pending' AND (e.claimed_until > 0 OR e.attempts > 0)" +
		" AND (e.next_attempt_at > " + b.arg(nowV) + " OR e.claimed_until > " + b.arg(nowV) + ")))" +
		" ORDER BY o.seq LIMIT " + b.arg(p.Limit) + ")" +
		" RETURNING seq, id, topic, message_key, payload, headers, created_at, attempts"
	rows, err := s.db.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: claim from %s: %w", s.t, err)
	}
	defer rows.Close()
	type seqMsg struct {
		seq int64
		m   store.ClaimedMessage
	}
	var got []seqMsg
	for rows.Next() {
		var (
			r       seqMsg
			headers string
			created timeValue
		)
		if err := rows.Scan(&r.seq, &r.m.ID, &r.m.Topic, &r.m.Key, &r.m.Payload, &headers, &created, &r.m.Attempts); err != nil {
			return nil, fmt.Errorf("outbox: claim from %s: %w", s.t, err)
		}
		if r.m.Headers, err = store.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %s: %w", r.m.ID, err)
		}
		r.m.CreatedAt = created.t
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: claim from %s: %w", s.t, err)
	}
	slices.SortFunc(got, func(a, b seqMsg) int { return cmp.Compare(a.seq, b.seq) })
	res := &store.ClaimResult{Token: token, Messages: make([]store.ClaimedMessage, len(got))}
	for i, r := range got {
		res.Messages[i] = r.m
	}
	return res, nil
}

// MarkDelivered implements [store.Store].
func (s *Store) MarkDelivered(ctx context.Context, p *store.MarkDeliveredParams) error {
	return s.inChunks(p.IDs, func(ids []string) error {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET state = 'delivered', delivered_at = " + b.arg(s.d.timeArg(s.now())) +
			", claim_token = NULL, claimed_until = 0 WHERE state = 'pending' AND id IN (" + b.list(ids) + ")"
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: mark %d messages delivered in %s: %w", len(ids), s.t, err)
		}
		return nil
	})
}

// Release implements [store.Store].
func (s *Store) Release(ctx context.Context, p *store.ReleaseParams) error {
	return s.inChunks(p.IDs, func(ids []string) error {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET claim_token = NULL, claimed_until = 0 WHERE claim_token = " + b.arg(p.Token) +
			" AND id IN (" + b.list(ids) + ")"
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: release %d messages in %s: %w", len(ids), s.t, err)
		}
		return nil
	})
}

func (s *Store) inChunks(ids []string, f func([]string) error) error {
	for start := 0; start < len(ids); start += s.d.maxParams - 8 {
		if err := f(ids[start:min(start+s.d.maxParams-8, len(ids))]); err != nil {
			return err
		}
	}
	return nil
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
	now := s.now()
	for _, f := range p.Failures {
		b := builder{d: s.d}
		state := store.Pending
		if f.Park {
			state = store.Parked
		}
		q := "UPDATE " + s.t.String() + " SET attempts = attempts + 1, state = " + b.arg(string(state)) +
			", last_error = " + b.arg(f.Error) + ", next_attempt_at = " + b.arg(s.d.timeArg(now.Add(f.RetryAfter))) +
			", claim_token = NULL, claimed_until = 0 WHERE state = 'pending' AND claim_token = " + b.arg(p.Token) +
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

// timeValue scans a time stored either natively or as integer unix microseconds (SQLite).
// NULL and zero scan as the zero time.
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
		v.t = x.UTC()
	default:
		return fmt.Errorf("outbox: cannot scan %T as a time", src)
	}
	return nil
}
