package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/middleware/idempotency"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend opens a fresh database; schema is "" when tables are not qualified.
type backend struct {
	name string
	open func(t *testing.T) (db *bun.DB, schema string)
}

// The *sql.DB handles are closed by dbtest; closing the bun.DB would close them twice.
var backends = []backend{
	{"sqlite", func(t *testing.T) (*bun.DB, string) {
		return bun.NewDB(dbtest.SQLite(t), sqlitedialect.New()), ""
	}},
	{"postgres", func(t *testing.T) (*bun.DB, string) {
		db, schema := dbtest.Postgres(t)
		return bun.NewDB(db, pgdialect.New()), schema
	}},
	{"mysql", func(t *testing.T) (*bun.DB, string) {
		db, _ := dbtest.MySQL(t)
		return bun.NewDB(db, mysqldialect.New()), ""
	}},
}

// forEachDB runs fn against every database, in parallel.
func forEachDB(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

func qualify(schema, name string) string {
	if schema == "" {
		return name
	}
	return schema + "." + name
}

// fixture is a migrated inbox and a ledger table that handlers credit through the inbox's
// transaction.
type fixture struct {
	db     *bun.DB
	inbox  *idempotency.Inbox
	table  bun.Ident
	ledger bun.Ident
	calls  atomic.Int64 // handler invocations
}

func setup(t *testing.T, b backend, cfg idempotency.Config) *fixture {
	t.Helper()
	ctx := context.Background()
	db, schema := b.open(t)
	cfg.Table = qualify(schema, "inbox")
	inbox, err := idempotency.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, inbox.Migrate(ctx))
	f := &fixture{db: db, inbox: inbox, table: bun.Ident(cfg.Table), ledger: bun.Ident(qualify(schema, "ledger"))}
	idType := "VARCHAR(64)"
	if db.Dialect().Name() == dialect.MySQL {
		idType = "VARBINARY(64)" // compared exactly, as in the inbox
	}
	_, err = db.ExecContext(ctx, "CREATE TABLE ? (message_id ? NOT NULL, amount INTEGER NOT NULL)", f.ledger, bun.Safe(idType))
	require.NoError(t, err)
	return f
}

// credit is a handler whose effect is a ledger row written through the inbox's transaction.
func (f *fixture) credit(amount int) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		f.calls.Add(1)
		tx, ok := idempotency.TxFromContext(msg.Context())
		if !ok {
			return nil, errors.New("no transaction in the message context")
		}
		_, err := tx.ExecContext(msg.Context(), "INSERT INTO ? (message_id, amount) VALUES (?, ?)", f.ledger, msg.UUID, amount)
		return nil, err
	}
}

// ledgerRows is the number of ledger rows of id and their total.
func (f *fixture) ledgerRows(t *testing.T, id string) (rows, total int64) {
	t.Helper()
	err := f.db.QueryRowContext(context.Background(), "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM ? WHERE message_id = ?", f.ledger, id).Scan(&rows, &total)
	require.NoError(t, err)
	return rows, total
}

func (f *fixture) inboxRows(t *testing.T) int64 {
	t.Helper()
	var n int64
	require.NoError(t, f.db.QueryRowContext(context.Background(), "SELECT COUNT(*) FROM ?", f.table).Scan(&n))
	return n
}

func (f *fixture) processed(t *testing.T, id string) bool {
	t.Helper()
	ok, err := f.inbox.Processed(context.Background(), id)
	require.NoError(t, err)
	return ok
}

func newMsg(id string) *message.Message { return message.NewMessage(id, []byte(`{"amount":10}`)) }

func TestDuplicatesAreDropped(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		cases := []struct {
			name string
			run  func(t *testing.T, f *fixture, id string)
		}{
			{"sequential", func(t *testing.T, f *fixture, id string) {
				h := f.inbox.Middleware(f.credit(10))
				for range 3 {
					out, err := h(newMsg(id))
					require.NoError(t, err)
					require.Empty(t, out)
				}
			}},
			{"concurrent", func(t *testing.T, f *fixture, id string) {
				const n = 8
				var (
					wg      sync.WaitGroup
					started atomic.Int32
					all     = make(chan struct{}) // closed once every delivery has begun
					errs    = make(chan error, n)
				)
				credit := f.credit(10)
				h := f.inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
					// The first delivery holds its transaction until all others are on their way
					// to the primary key, so that they really overlap.
					select {
					case <-all:
					case <-time.After(30 * time.Second):
						return nil, errors.New("not all deliveries started")
					}
					return credit(msg)
				})
				for range n {
					wg.Go(func() {
						if started.Add(1) == n {
							close(all)
						}
						_, err := h(newMsg(id))
						errs <- err
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					require.NoError(t, err)
				}
			}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				f := setup(t, b, idempotency.Config{})
				const id = "pay-1"
				tc.run(t, f, id)
				rows, total := f.ledgerRows(t, id)
				require.EqualValues(t, 1, rows, "the effect happens once")
				require.EqualValues(t, 10, total)
				require.EqualValues(t, 1, f.calls.Load(), "the handler runs once")
				require.True(t, f.processed(t, id))
				require.EqualValues(t, 1, f.inboxRows(t))
			})
		}
	})
}

func TestHandlerErrorRollsBackEffectAndID(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		const id = "pay-2"
		errBoom := errors.New("boom")
		credit := f.credit(10)
		failing := f.inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
			if _, err := credit(msg); err != nil {
				return nil, err
			}
			return nil, errBoom // after the effect was written
		})
		_, err := failing(newMsg(id))
		require.ErrorIs(t, err, errBoom)
		rows, _ := f.ledgerRows(t, id)
		require.Zero(t, rows, "the effect was rolled back")
		require.False(t, f.processed(t, id), "the id was rolled back")

		h := f.inbox.Middleware(credit)
		for range 2 { // the redelivery is processed, and only once
			_, err := h(newMsg(id))
			require.NoError(t, err)
		}
		rows, total := f.ledgerRows(t, id)
		require.EqualValues(t, 1, rows)
		require.EqualValues(t, 10, total)
		require.True(t, f.processed(t, id))
	})
}

func TestMessageWithoutUsableID(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		h := f.inbox.Middleware(f.credit(10))
		for _, id := range []string{"", strings.Repeat("x", idempotency.MaxIDBytes+1), "bad\xff", "nul\x00"} {
			msg := newMsg("")
			msg.UUID = id
			_, err := h(msg)
			require.ErrorIs(t, err, idempotency.ErrNoMessageID, "id %q", id)
		}
		require.Zero(t, f.calls.Load(), "the handler is not called")
		require.Zero(t, f.inboxRows(t))

		// The longest id is stored.
		long := strings.Repeat("y", idempotency.MaxIDBytes)
		_, err := h(newMsg(long))
		require.NoError(t, err)
		require.True(t, f.processed(t, long))
	})
}

// Ids that a case-insensitive or space-padding collation would confuse are distinct messages.
func TestIDsAreComparedExactly(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		h := f.inbox.Middleware(f.credit(1))
		ids := []string{"abc", "ABC", "abc ", "äbc"}
		for _, id := range ids {
			_, err := h(newMsg(id))
			require.NoError(t, err)
		}
		for _, id := range ids {
			rows, _ := f.ledgerRows(t, id)
			require.EqualValues(t, 1, rows, "id %q", id)
			require.True(t, f.processed(t, id), "id %q", id)
		}
		require.EqualValues(t, len(ids), f.calls.Load())
	})
}

func TestTransactionIsOnlyInTheHandlersContext(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		type key struct{}
		msg := newMsg("ctx-1")
		msg.SetContext(context.WithValue(context.Background(), key{}, "kept"))
		var inside bool
		produced := message.NewMessage("out-1", nil)
		h := f.inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
			_, inside = idempotency.TxFromContext(msg.Context())
			require.Equal(t, "kept", msg.Context().Value(key{}), "the delivery's context is kept")
			return []*message.Message{produced}, nil
		})
		out, err := h(msg)
		require.NoError(t, err)
		require.True(t, inside)
		require.Equal(t, []*message.Message{produced}, out, "produced messages are returned")
		_, after := idempotency.TxFromContext(msg.Context())
		require.False(t, after, "the finished transaction does not outlive the call")
		require.Equal(t, "kept", msg.Context().Value(key{}))

		out, err = h(newMsg("ctx-1"))
		require.NoError(t, err)
		require.Empty(t, out, "a duplicate produces nothing")
	})
}

func TestProcessed(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		require.False(t, f.processed(t, "p-1"))
		_, err := f.inbox.Middleware(f.credit(1))(newMsg("p-1"))
		require.NoError(t, err)
		require.True(t, f.processed(t, "p-1"))
		require.False(t, f.processed(t, "p-2"))
	})
}

// deleteCounter counts the DELETE statements bun runs.
type deleteCounter struct{ n atomic.Int64 }

func (c *deleteCounter) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context {
	return ctx
}

func (c *deleteCounter) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	if strings.HasPrefix(e.Query, "DELETE") {
		c.n.Add(1)
	}
}

func TestCleanupDeletesOnlyExpiredIDsInBatches(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := setup(t, b, idempotency.Config{Retention: 7 * 24 * time.Hour})
		now := time.Now()
		insert := func(prefix string, n int, at time.Time) {
			const chunk = 500
			for start := 0; start < n; start += chunk {
				k := min(chunk, n-start)
				args := []any{f.table}
				for j := range k {
					args = append(args, fmt.Sprintf("%s-%d", prefix, start+j), f.inbox.TimeArg(at))
				}
				q := "INSERT INTO ? (message_id, handled_at) VALUES " + strings.TrimSuffix(strings.Repeat("(?, ?), ", k), ", ")
				_, err := f.db.ExecContext(ctx, q, args...)
				require.NoError(t, err)
			}
		}
		const old = 2600
		insert("old", old, now.Add(-8*24*time.Hour))
		insert("young", 10, now.Add(-6*24*time.Hour))
		_, err := f.inbox.Middleware(f.credit(1))(newMsg("fresh"))
		require.NoError(t, err)

		deletes := &deleteCounter{}
		f.db.AddQueryHook(deletes)
		n, err := f.inbox.Cleanup(ctx)
		require.NoError(t, err)
		require.EqualValues(t, old, n)
		require.EqualValues(t, 3, deletes.n.Load(), "1000 + 1000 + 600")
		require.EqualValues(t, 11, f.inboxRows(t))
		require.False(t, f.processed(t, "old-0"))
		require.True(t, f.processed(t, "young-0"))
		require.True(t, f.processed(t, "fresh"))

		n, err = f.inbox.Cleanup(ctx)
		require.NoError(t, err)
		require.Zero(t, n)

		// Two days later the young ids have expired too.
		f.inbox.SetNow(func() time.Time { return now.Add(2 * 24 * time.Hour) })
		n, err = f.inbox.Cleanup(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 10, n)
		require.True(t, f.processed(t, "fresh"))
		require.EqualValues(t, 1, f.inboxRows(t))
	})
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db, schema := b.open(t)
		inbox, err := idempotency.New(db, idempotency.Config{Table: qualify(schema, "consumer_inbox")})
		require.NoError(t, err)
		_, err = inbox.Processed(ctx, "x")
		require.Error(t, err, "no table before Migrate")
		errs := make(chan error, 3)
		for range 3 {
			go func() { errs <- inbox.Migrate(ctx) }()
		}
		for range 3 {
			require.NoError(t, <-errs)
		}
		require.NoError(t, inbox.Migrate(ctx))
		ok, err := inbox.Processed(ctx, "x")
		require.NoError(t, err)
		require.False(t, ok)
	})
}

// otherDialect is SQLite under another name.
type otherDialect struct{ *sqlitedialect.Dialect }

func (otherDialect) Name() dialect.Name { return dialect.MSSQL }

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	sqldb := dbtest.SQLite(t)
	db := bun.NewDB(sqldb, sqlitedialect.New())

	_, err := idempotency.New(nil, idempotency.Config{})
	require.ErrorContains(t, err, "db is nil")

	_, err = idempotency.New(bun.NewDB(sqldb, otherDialect{sqlitedialect.New()}), idempotency.Config{})
	require.ErrorContains(t, err, "unsupported bun dialect")

	for _, table := range []string{"a;b", "1x", `x"y`, "x`y", "a.b.c", ".a", "a.", "a b", "ü", strings.Repeat("t", 53)} {
		_, err := idempotency.New(db, idempotency.Config{Table: table})
		require.ErrorContains(t, err, "Config.Table", "table %q", table)
		require.True(t, strings.HasPrefix(err.Error(), "outbox: "))
	}
	_, err = idempotency.New(db, idempotency.Config{Retention: -time.Second})
	require.ErrorContains(t, err, "Config.Retention")

	for _, table := range []string{"", "inbox", "_x9", "app.inbox", strings.Repeat("t", 52)} {
		_, err := idempotency.New(db, idempotency.Config{Table: table})
		require.NoError(t, err, "table %q", table)
	}
}
