package dispatcher_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/middleware/idempotency"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Every bad input the library can be given, and what it gets: a clear error before anything is
// written, and nothing lost of what was written before. (A database user without the rights the
// store needs gets store.ErrPermission: TestCheckNamesMissingRights in pgstore and mysqlstore.)
func TestBadInputGetsAClearErrorAndLosesNothing(t *testing.T) {
	t.Run("Messages", func(t *testing.T) {
		f := setup(t)
		tx, err := f.st.DB().BeginTx(f.ctx, nil)
		require.NoError(t, err)
		good := store.Message{Topic: "payments", Key: "p-1", Payload: []byte("kept")}
		require.NoError(t, f.st.Write(f.ctx, tx, good))
		for name, c := range map[string]struct {
			msg  store.Message
			want error
		}{
			"empty topic":            {store.Message{Payload: []byte("x")}, store.ErrEmptyTopic},
			"payload over the limit": {store.Message{Topic: "t", Payload: make([]byte, store.DefaultMaxPayloadBytes+1)}, store.ErrPayloadTooLarge},
			"empty header name":      {store.Message{Topic: "t", Headers: map[string]string{"": "v"}}, store.ErrInvalidHeader},
			"header name with CR":    {store.Message{Topic: "t", Headers: map[string]string{"a\r": "v"}}, store.ErrInvalidHeader},
			"reserved header name":   {store.Message{Topic: "t", Headers: map[string]string{publisher.MetadataID: "v"}}, store.ErrInvalidHeader},
			"header value not UTF8":  {store.Message{Topic: "t", Headers: map[string]string{"a": "\xff"}}, store.ErrInvalidHeader},
			"header value with NUL":  {store.Message{Topic: "t", Headers: map[string]string{"a": "\x00"}}, store.ErrInvalidHeader},
			"key over 255 bytes":     {store.Message{Topic: "t", Key: strings.Repeat("k", 256)}, store.ErrInvalidKey},
		} {
			require.ErrorIs(t, f.st.Write(f.ctx, tx, good, c.msg), c.want, name)
		}
		require.ErrorIs(t, f.st.Write(f.ctx, nil, good), store.ErrNilTx)
		require.ErrorIs(t, f.st.Write(f.ctx, (*sql.Tx)(nil), good), store.ErrNilTx)
		require.ErrorIs(t, f.st.Write(f.ctx, bun.Tx{}, good), store.ErrNilTx)
		require.NoError(t, tx.Commit(), "the transaction stayed usable")
		require.ErrorIs(t, f.st.Write(f.ctx, tx, good), sql.ErrTxDone, "a committed transaction")

		n := outboxtest.Drain(t, f.st, f.pub)
		require.Equal(t, 1, n, "exactly the good message, once")
		require.Equal(t, "kept", string(f.pub.Messages("payments")[0].Payload))
	})

	t.Run("TableNames", func(t *testing.T) {
		for _, name := range []string{"outbox;drop table x", `out"box`, "1outbox", "a.b.c", "x y"} {
			_, err := dbtest.EngineOf(sqlitestore.New(dbtest.SQLite(t), sqlitestore.Config{Table: name}))
			require.ErrorIs(t, err, store.ErrInvalidTable, name)
			pg, _ := pgstore.Open(dbtest.PostgresDSN())
			_, err = dbtest.EngineOf(pgstore.New(pg, pgstore.Config{Table: name}))
			require.ErrorIs(t, err, store.ErrInvalidTable, name)
			pg.Close()
			my, _ := mysqlstore.Open(dbtest.MySQLDSN())
			_, err = dbtest.EngineOf(mysqlstore.New(my, mysqlstore.Config{Table: name}))
			require.ErrorIs(t, err, store.ErrInvalidTable, name)
			my.Close()
		}
	})

	t.Run("DSNs", func(t *testing.T) {
		_, err := pgstore.Open("postgres://u:hunter2@[::1")
		require.ErrorContains(t, err, "postgres DSN")
		require.NotContains(t, err.Error(), "hunter2")
		_, err = mysqlstore.Open("u:hunter2@tcp(127.0.0.1")
		require.ErrorContains(t, err, "mysql DSN")
		require.NotContains(t, err.Error(), "hunter2")

		pg, err := pgstore.Open("postgres://u:hunter2@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
		require.NoError(t, err)
		defer pg.Close()
		st, err := dbtest.EngineOf(pgstore.New(pg, pgstore.Config{}))
		require.NoError(t, err)
		d, err := dispatcher.New(st, outboxtest.NewPublisher(), dispatcher.Config{Logger: quiet()})
		require.NoError(t, err)
		err = d.Start(context.Background())
		require.ErrorContains(t, err, "cannot reach the postgres database")
		require.NotContains(t, err.Error(), "hunter2")
	})

	t.Run("NotMigrated", func(t *testing.T) {
		for name, open := range map[string]func(t *testing.T) dbtest.Store{
			"sqlite": func(t *testing.T) dbtest.Store {
				st, err := dbtest.EngineOf(sqlitestore.New(dbtest.SQLite(t), sqlitestore.Config{}))
				require.NoError(t, err)
				return st
			},
			"postgres": func(t *testing.T) dbtest.Store {
				db, schema := dbtest.Postgres(t)
				st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox"}))
				require.NoError(t, err)
				return st
			},
			"mariadb": func(t *testing.T) dbtest.Store {
				db, _ := dbtest.MySQL(t)
				st, err := dbtest.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
				require.NoError(t, err)
				return st
			},
		} {
			d, err := dispatcher.New(open(t), outboxtest.NewPublisher(), dispatcher.Config{Logger: quiet()})
			require.NoError(t, err)
			require.ErrorIs(t, d.Start(context.Background()), store.ErrNotMigrated, name)
		}
	})

	t.Run("ConsumerMessageWithoutID", func(t *testing.T) {
		db := bun.NewDB(dbtest.SQLite(t), sqlitedialect.New())
		inbox, err := idempotency.New(db, idempotency.Config{})
		require.NoError(t, err)
		require.NoError(t, inbox.Migrate(context.Background()))
		called := false
		h := inbox.Middleware(func(*message.Message) ([]*message.Message, error) { called = true; return nil, nil })
		_, err = h(message.NewMessage("", []byte("x")))
		require.ErrorIs(t, err, idempotency.ErrNoMessageID)
		require.False(t, called, "not handled, and not acknowledged as if it were")
	})
}
