package sqlitestore_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

type payment struct {
	bun.BaseModel `bun:"table:payments"`
	ID            int64 `bun:",pk,autoincrement"`
	ExternalID    string
}

// Write takes the handles applications have: bun.Tx, *bun.DB, *sql.Tx, *sql.DB and *sql.Conn,
// and with a transaction its message commits or rolls back with the domain rows.
func TestWriteThroughEveryKindOfHandle(t *testing.T) {
	ctx := context.Background()
	sqldb := openDB(t)
	db := bun.NewDB(sqldb, sqlitedialect.New())
	st, err := sqlstore.EngineOf(sqlitestore.New(sqldb, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	_, err = db.NewCreateTable().Model((*payment)(nil)).Exec(ctx)
	require.NoError(t, err)

	payload := []byte{0, 'x', 0xff} // bytes that an inlining formatter would have to escape
	writeIn := func(externalID string, fail bool) error {
		return db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.NewInsert().Model(&payment{ExternalID: externalID}).Exec(ctx); err != nil {
				return err
			}
			if err := st.Write(ctx, tx, store.Message{Topic: "payments", Key: externalID, Payload: payload}); err != nil {
				return err
			}
			outboxtest.RequireWritten(t, st, tx, outboxtest.Want{Topic: "payments", Key: externalID, Payload: payload})
			if fail {
				return sql.ErrConnDone // any error rolls the transaction back
			}
			return nil
		})
	}
	require.NoError(t, writeIn("committed", false))
	require.Error(t, writeIn("rolled-back", true))
	outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Key: "committed", Payload: payload})
	outboxtest.RequireNotWritten(t, st, nil, outboxtest.Want{Key: "rolled-back"})
	n, err := db.NewSelect().Model((*payment)(nil)).Count(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	// The other handles.
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "t", Key: "bun.DB"}))
	sqltx, err := sqldb.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, st.Write(ctx, sqltx, store.Message{Topic: "t", Key: "sql.Tx"}))
	require.NoError(t, sqltx.Commit())
	require.NoError(t, st.Write(ctx, sqldb, store.Message{Topic: "t", Key: "sql.DB"}))
	conn, err := sqldb.Conn(ctx)
	require.NoError(t, err)
	require.NoError(t, st.Write(ctx, conn, store.Message{Topic: "t", Key: "sql.Conn"}))
	require.NoError(t, conn.Close())
	for _, k := range []string{"bun.DB", "sql.Tx", "sql.DB", "sql.Conn"} {
		outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Topic: "t", Key: k})
	}

	// Nil and finished handles.
	require.ErrorIs(t, st.Write(ctx, bun.Tx{}, store.Message{Topic: "t"}), store.ErrNilTx)
	require.ErrorIs(t, st.Write(ctx, (*bun.DB)(nil), store.Message{Topic: "t"}), store.ErrNilTx)
	require.ErrorIs(t, st.Write(ctx, sqltx, store.Message{Topic: "t"}), sql.ErrTxDone, "a committed transaction")
}
