package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
)

func waitSignal(t *testing.T, signals <-chan struct{}, why string) {
	t.Helper()
	select {
	case <-signals:
	case <-time.After(10 * time.Second):
		t.Fatalf("no signal: %s", why)
	}
}

func drainSignals(signals <-chan struct{}) {
	for {
		select {
		case <-signals:
		default:
			return
		}
	}
}

// A message committed by another instance (another pool, another Store value) wakes this
// store's subscribers through LISTEN/NOTIFY, only once it commits, and the listener comes back
// by itself when its connection is killed.
func TestNotificationsCrossInstancesAndSurviveKilledConnection(t *testing.T) {
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	table := schema + ".outbox"
	listener, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: table}))
	require.NoError(t, err)
	require.NoError(t, listener.Migrate(ctx))
	signals, cancel := listener.Subscribe()
	defer cancel()
	waitSignal(t, signals, "the listener wakes subscribers once it listens")

	otherDB, err := pgstore.Open(dbtest.PostgresDSN())
	require.NoError(t, err)
	defer otherDB.Close()
	other, err := sqlstore.EngineOf(pgstore.New(otherDB, pgstore.Config{Table: table}))
	require.NoError(t, err)

	tx, err := otherDB.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, other.Write(ctx, tx, store.Message{Topic: "t", Payload: []byte("x")}))
	select {
	case <-signals:
		t.Fatal("signal before commit")
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, tx.Commit())
	waitSignal(t, signals, "a commit in another instance")

	// Kill the listening connection: the listener reconnects and wakes subscribers (it may
	// have missed notifications), then hears commits again.
	var killed int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`).Scan(&killed))
	require.Positive(t, killed)
	waitSignal(t, signals, "the listener is back")
	drainSignals(signals)
	require.Eventually(t, func() bool {
		require.NoError(t, other.Write(ctx, otherDB, store.Message{Topic: "t", Payload: []byte("y")}))
		select {
		case <-signals:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	}, 20*time.Second, time.Millisecond, "commits are heard again after the reconnect")
}
