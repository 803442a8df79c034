package idempotency

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxgo/outbox/internal/tracing"
)

// Defaults of [Config].
const (
	DefaultTable     = "inbox"
	DefaultRetention = 7 * 24 * time.Hour
)

// MaxIDBytes is the longest message id the inbox stores.
const MaxIDBytes = 64

// cleanupBatch bounds each DELETE of Cleanup, so that it holds locks (and, on SQLite, the
// write lock) only briefly while consumers keep writing.
const cleanupBatch = 1000

// ErrNoMessageID is returned for a message without a usable id: processing it would bypass
// the inbox, and acknowledging it would lose it.
var ErrNoMessageID = errors.New("outbox: message has no id")

// Config configures an [Inbox].
type Config struct {
	// Table is the inbox table, optionally schema-qualified ("app.inbox"). Letters, digits and
	// underscores only. Defaults to DefaultTable.
	Table string
	// Retention is how long processed ids are kept (see [Inbox.Cleanup]). It must exceed the
	// longest time after which a message can be redelivered. Defaults to DefaultRetention.
	Retention time.Duration
	// Logger receives a debug record per dropped duplicate. Nil means slog.Default().
	Logger *slog.Logger
	// TracerProvider receives a consumer span per message that carries a trace context (the
	// traceparent header the dispatcher sets), a child of the dispatcher's publish span; the
	// handler's context carries it. Nil means otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// Inbox records processed message ids in a table of the consumer's database.
type Inbox struct {
	db        *bun.DB
	d         dialect.Name
	schema    string
	name      string
	table     bun.Ident // qualified
	retention time.Duration
	log       *slog.Logger
	tracer    trace.Tracer
	now       func() time.Time
}

// Each part at most 52 characters, so that "<name>_handled_at" fits the 63/64 character
// identifier limits of Postgres and MySQL.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,51}$`)

// New returns the inbox for db, which must use bun's Postgres, MySQL or SQLite dialect. It does
// not touch the database: call [Inbox.Migrate] to create the table.
func New(db *bun.DB, cfg Config) (*Inbox, error) {
	if db == nil {
		return nil, errors.New("outbox: idempotency.New: db is nil")
	}
	d := db.Dialect().Name()
	switch d {
	case dialect.PG, dialect.MySQL, dialect.SQLite:
	default:
		return nil, fmt.Errorf("outbox: idempotency.New: unsupported bun dialect %q (want pg, mysql or sqlite)", d)
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	parts := strings.Split(cfg.Table, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("outbox: idempotency: Config.Table %q has more than one dot", cfg.Table)
	}
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return nil, fmt.Errorf("outbox: idempotency: invalid Config.Table %q (want letters, digits and underscores, not starting with a digit, at most 52 each, optionally schema.table)", cfg.Table)
		}
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("outbox: idempotency: Config.Retention is negative (%s)", cfg.Retention)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	i := &Inbox{
		db:        db,
		d:         d,
		name:      parts[len(parts)-1],
		table:     bun.Ident(cfg.Table),
		retention: cfg.Retention,
		now:       time.Now,
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	i.tracer = cfg.TracerProvider.Tracer("github.com/outboxgo/outbox/middleware/idempotency")
	if len(parts) == 2 {
		i.schema = parts[0]
	}
	i.log = cfg.Logger.With(slog.String("component", "outbox.idempotency"), slog.String("table", cfg.Table))
	return i, nil
}

// Migrate creates the inbox table and its index if they do not exist. It is idempotent and safe
// to run from several consumers at once. It uses its own connection and transaction; do not
// call it from inside one of yours.
//
// handled_at is TIMESTAMPTZ on Postgres, DATETIME(6) in UTC on MySQL, and on SQLite TEXT in
// UTC as 'YYYY-MM-DD HH:MM:SS.ffffff', which sorts in time order. On MySQL message_id is
// VARBINARY(64): the VARCHAR collations compare case-insensitively or ignore trailing spaces,
// which would make distinct ids duplicates.
func (i *Inbox) Migrate(ctx context.Context) error {
	var err error
	switch i.d {
	case dialect.PG:
		// Concurrent CREATE TABLE IF NOT EXISTS can fail on Postgres's catalog; a lock makes the
		// second one wait and find the table.
		err = i.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", i.lockKey()); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS ? (message_id VARCHAR(64) NOT NULL PRIMARY KEY, handled_at TIMESTAMPTZ NOT NULL)", i.table); err != nil {
				return err
			}
			// Index names are not schema-qualified on Postgres: the index lives in the table's.
			_, err := tx.ExecContext(ctx, "CREATE INDEX IF NOT EXISTS ? ON ? (handled_at)", bun.Ident(i.name+"_handled_at"), i.table)
			return err
		})
	case dialect.MySQL:
		// MySQL has no CREATE INDEX IF NOT EXISTS, so the index is part of the table.
		_, err = i.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS ? (message_id VARBINARY(64) NOT NULL PRIMARY KEY, handled_at DATETIME(6) NOT NULL, KEY ? (handled_at)) ENGINE = InnoDB",
			i.table, bun.Ident(i.name+"_handled_at"))
	case dialect.SQLite:
		if _, err = i.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS ? (message_id VARCHAR(64) NOT NULL PRIMARY KEY, handled_at TEXT NOT NULL)", i.table); err != nil {
			break
		}
		// SQLite qualifies the index, not the table it is on.
		index := i.name + "_handled_at"
		if i.schema != "" {
			index = i.schema + "." + index
		}
		_, err = i.db.ExecContext(ctx, "CREATE INDEX IF NOT EXISTS ? ON ? (handled_at)", bun.Ident(index), bun.Ident(i.name))
	}
	if err != nil {
		return fmt.Errorf("outbox: idempotency: migrate %s: %w", i.table, err)
	}
	return nil
}

func (i *Inbox) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("outbox:inbox-migrate:" + string(i.table)))
	return int64(h.Sum64() >> 1)
}

// timeArg is how a time goes into a query; see Migrate for the column types.
func (i *Inbox) timeArg(t time.Time) any {
	t = t.UTC().Truncate(time.Microsecond)
	if i.d == dialect.SQLite {
		return t.Format("2006-01-02 15:04:05.000000")
	}
	return t
}

type txKey struct{}

// TxFromContext returns the transaction of the message being handled under [Inbox.Middleware]
// (use msg.Context()). Every effect that must happen exactly once goes through it. It reports
// false outside the middleware and under [Memory].
func TxFromContext(ctx context.Context) (bun.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(bun.Tx)
	return tx, ok
}

// checkID refuses ids the inbox cannot store the same way on every database.
func checkID(id string) error {
	switch {
	case id == "":
		return ErrNoMessageID
	case len(id) > MaxIDBytes:
		return fmt.Errorf("%w: id is %d bytes long, more than %d", ErrNoMessageID, len(id), MaxIDBytes)
	case !utf8.ValidString(id) || strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("%w: id %q is not valid UTF-8 without NUL", ErrNoMessageID, id)
	}
	return nil
}

// Middleware runs h at most once per message id, in a transaction that also records the id.
// Use it as a message.HandlerMiddleware: router.AddMiddleware(inbox.Middleware).
func (i *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if err := checkID(msg.UUID); err != nil {
			return nil, err
		}
		orig := msg.Context()
		// The transaction ends with this call; later middlewares must not find it.
		defer msg.SetContext(orig)
		ctx, end := i.consumeSpan(orig, msg)
		var result error
		defer func() { end(result) }()

		var (
			out       []*message.Message
			handled   bool // the id was new and h ran
			handlerEr error
		)
		err := i.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			res, err := tx.ExecContext(ctx, i.insertSQL(), i.table, msg.UUID, i.timeArg(i.now()))
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			if n == 0 {
				return nil // processed before; commit the empty transaction
			}
			handled = true
			msg.SetContext(context.WithValue(ctx, txKey{}, tx))
			out, handlerEr = h(msg)
			return handlerEr
		})
		switch {
		case handlerEr != nil:
			result = handlerEr
			return nil, handlerEr // as the handler returned it; the rollback forgot the id
		case err != nil && handled:
			result = fmt.Errorf("outbox: idempotency: commit message %s: %w", msg.UUID, err)
			return nil, result
		case err != nil:
			result = fmt.Errorf("outbox: idempotency: record message %s: %w", msg.UUID, err)
			return nil, result
		case !handled:
			i.log.DebugContext(orig, "outbox: dropped a message that was processed before",
				slog.String("message_uuid", msg.UUID), slog.String("handler", message.HandlerNameFromCtx(orig)))
			return nil, nil
		}
		return out, nil
	}
}

// consumeSpan starts the consumer span of msg as a child of the trace context in its metadata
// (the dispatcher's publish span), and returns the handler's context and the function that
// ends the span. A message without a trace context gets no span.
func (i *Inbox) consumeSpan(ctx context.Context, msg *message.Message) (context.Context, func(error)) {
	return tracing.Start(ctx, i.tracer, msg.Metadata, trace.SpanKindConsumer, "process", message.SubscribeTopicFromCtx(ctx), msg.UUID)
}

func (i *Inbox) insertSQL() string {
	if i.d == dialect.MySQL {
		// The id is checked beforehand, so IGNORE can only hide the duplicate key.
		return "INSERT IGNORE INTO ? (message_id, handled_at) VALUES (?, ?)"
	}
	return "INSERT INTO ? (message_id, handled_at) VALUES (?, ?) ON CONFLICT (message_id) DO NOTHING"
}

// Processed reports whether the message id was processed (and not yet cleaned up). It sees
// committed transactions only.
func (i *Inbox) Processed(ctx context.Context, id string) (bool, error) {
	var n int64
	if err := i.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM ? WHERE message_id = ?", i.table, id).Scan(&n); err != nil {
		return false, fmt.Errorf("outbox: idempotency: processed %s: %w", id, err)
	}
	return n > 0, nil
}

// Cleanup deletes the ids processed more than Config.Retention ago, a bounded batch per
// statement, and returns how many it deleted (also when it fails part way).
func (i *Inbox) Cleanup(ctx context.Context) (int64, error) {
	cutoff := i.timeArg(i.now().Add(-i.retention))
	var total int64
	for {
		var query string
		var args []any
		if i.d == dialect.MySQL {
			query, args = "DELETE FROM ? WHERE handled_at < ? LIMIT ?", []any{i.table, cutoff, cleanupBatch}
		} else {
			// Neither Postgres nor a default SQLite build has DELETE ... LIMIT.
			query = "DELETE FROM ? WHERE message_id IN (SELECT message_id FROM ? WHERE handled_at < ? LIMIT ?)"
			args = []any{i.table, i.table, cutoff, cleanupBatch}
		}
		res, err := i.db.ExecContext(ctx, query, args...)
		if err != nil {
			return total, fmt.Errorf("outbox: idempotency: cleanup %s: %w", i.table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("outbox: idempotency: cleanup %s: %w", i.table, err)
		}
		total += n
		if n < cleanupBatch {
			return total, nil
		}
	}
}
