package pgstore_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

func TestInspectLogFollowsTheSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, db := newStore(t)
	table := st.QualifiedName()
	slot, _ := pgstore.Names(table)

	s, err := pgstore.InspectLog(ctx, db, table)
	require.NoError(t, err)
	require.Equal(t, slot, s.Slot)
	require.Equal(t, "logical", s.WALLevel)
	require.True(t, s.SlotExists, "Migrate created the slot")
	require.False(t, s.Active)
	require.Zero(t, s.ActivePID)
	require.Empty(t, s.Problem)
	require.Contains(t, []string{"reserved", "extended"}, s.WALStatus)
	require.GreaterOrEqual(t, s.LagBytes, int64(0))
	require.Positive(t, s.RetainedBytes)

	stop := startReader(st, newConsumer())
	require.Eventually(t, func() bool {
		s, err = pgstore.InspectLog(ctx, db, table)
		return err == nil && s.Active
	}, 15*time.Second, 10*time.Millisecond, "a reader connects to the slot")
	require.Positive(t, s.ActivePID)
	require.ErrorIs(t, stop(), context.Canceled)

	// The slot's sender lets go of it a moment after the reader stops.
	require.Eventually(t, func() bool {
		_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	s, err = pgstore.InspectLog(ctx, db, table)
	require.NoError(t, err)
	require.False(t, s.SlotExists)
	require.EqualValues(t, -1, s.LagBytes)
	require.EqualValues(t, -1, s.RetainedBytes)
	require.Contains(t, s.Problem, "replication slot "+slot+" does not exist; run Migrate")

	_, err = pgstore.InspectLog(ctx, db, "bad name")
	require.ErrorIs(t, err, store.ErrInvalidTable)
}

// Slots belong to the server: a slot of the same name made for an outbox in another
// database is no slot of this one's.
func TestInspectLogNamesTheSlotOfAnotherDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	table := schema + ".outbox"
	slot, _ := pgstore.Names(table)

	takeSlotInAnotherDatabase(t, slot)

	s, err := pgstore.InspectLog(ctx, db, table)
	require.NoError(t, err)
	require.False(t, s.SlotExists)
	require.Contains(t, s.Problem, "replication slot "+slot+" belongs to database postgres")

	// The reader says the same, and Migrate leaves the other database's slot alone.
	st, err := pgstore.New(db, pgstore.Config{Table: table})
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	err = st.ReadLog(ctx, store.LogConsumer{Deliver: func(context.Context, []store.ClaimedMessage) *store.LogOutcome { return nil }})
	require.ErrorIs(t, err, store.ErrLogUnavailable)
	require.ErrorContains(t, err, "replication slot "+slot+" belongs to database postgres")
}

// takeSlotInAnotherDatabase creates a logical replication slot named slot in the database
// "postgres", as an outbox of the same name there would have, until the test ends.
func takeSlotInAnotherDatabase(t *testing.T, slot string) {
	t.Helper()
	u, err := url.Parse(dbtest.PostgresDSN())
	require.NoError(t, err)
	u.Path = "/postgres"
	other, err := pgstore.Open(u.String())
	require.NoError(t, err)
	_, err = other.Exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	require.NoError(t, err)
	t.Cleanup(func() {
		other.Exec("SELECT pg_drop_replication_slot($1)", slot) // in its own database
		other.Close()
	})
}
