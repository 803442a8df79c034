package dispatcher_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// openStrict opens a store with Config.StrictOrder on the database of shared, migrated.
func openStrict(t *testing.T, shared sharedDB) (*sql.DB, dbtest.Store) {
	t.Helper()
	var (
		db  *sql.DB
		err error
	)
	switch shared.kind {
	case "sqlite":
		db, err = sqlitestore.Open(shared.dsn)
	case "postgres":
		db, err = pgstore.Open(shared.dsn)
	default:
		db, err = mysqlstore.Open(shared.dsn)
	}
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	cfg := pgstore.Config{Table: shared.table, Logger: quiet(), StrictOrder: true}
	var st dbtest.Store
	switch shared.kind {
	case "sqlite":
		st, err = dbtest.EngineOf(sqlitestore.New(db, cfg))
	case "postgres":
		st, err = dbtest.EngineOf(pgstore.New(db, cfg))
	default:
		st, err = dbtest.EngineOf(mysqlstore.New(db, cfg))
	}
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return db, st
}

// With Config.StrictOrder, a parked message holds back the later messages of its key, in
// every mode, until it is requeued; then the key goes out in write order. Other keys move on.
func TestStrictOrderHoldsAKeyBehindItsParkedMessage(t *testing.T) {
	for _, newDB := range allDBs {
		t.Run(newDB(t).name, func(t *testing.T) {
			shared := newDB(t)
			db, st := openStrict(t, shared)
			pub := outboxtest.NewPublisher()
			var refuse atomic.Bool
			refuse.Store(true)
			pub.Fail = func(_ string, m *message.Message) error {
				if refuse.Load() && string(m.Payload) == "k/0" {
					return publisher.Permanent(errors.New("refused"))
				}
				return nil
			}
			d := startDispatcher(t, st, pub, shared.config(dispatcher.Config{Logger: quiet(), SweepAfter: 200 * time.Millisecond}))
			ctx := context.Background()
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.NoError(t, st.Write(ctx, tx, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/0")},
				store.Message{Topic: "orders", Key: "k", Payload: []byte("k/1")}, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/2")}))
			require.NoError(t, tx.Commit())
			require.Eventually(t, func() bool { return d.Stats().Parked == 1 }, 30*time.Second, 10*time.Millisecond)

			// Another key, written after the park, goes out; k's later messages do not.
			require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "j", Payload: []byte("j/0")}))
			require.Eventually(t, func() bool { return len(pub.Messages("orders")) >= 1 }, 30*time.Second, 10*time.Millisecond)
			require.Eventually(t, func() bool {
				res, err := st.List(ctx, &store.ListParams{Key: "k", State: store.Pending})
				require.NoError(t, err)
				return len(res.Messages) == 2 // after the sweep has had them in hand, in log mode
			}, 30*time.Second, 10*time.Millisecond)
			waitSweeps(d)
			for _, m := range pub.Messages("orders") {
				require.Equal(t, "j/0", string(m.Payload), "only the other key was published")
			}

			refuse.Store(false)
			n, err := st.Requeue(ctx, &store.RequeueParams{Key: "k"})
			require.NoError(t, err)
			require.Equal(t, int64(1), n)
			require.Eventually(t, func() bool { return len(pub.Messages("orders")) == 4 }, 30*time.Second, 10*time.Millisecond)
			var got []string
			for _, m := range pub.Messages("orders")[1:] {
				got = append(got, string(m.Payload))
			}
			require.Equal(t, []string{"k/0", "k/1", "k/2"}, got)
		})
	}
}

// waitSweeps lets a dispatcher beside a log reader run its handed-over sweep at least once
// more (every two seconds); a polling dispatcher claims at once anyway.
func waitSweeps(d *dispatcher.Dispatcher) {
	if d.Mode() == dispatcher.ModeLog {
		time.Sleep(2500 * time.Millisecond)
	}
}
