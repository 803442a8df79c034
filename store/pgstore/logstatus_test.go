package pgstore_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/storetest"
)

func TestInspectLogFollowsTheSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, db := newStore(t)
	table := st.QualifiedName()
	slot := slotOf(t, db, table)

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

// Slot names are server-wide. An outbox of the same table in another database, whether its
// slot was named as this module names slots now or as it did before (after the table only),
// leaves this database's outbox a slot of its own, which the reader reads.
func TestOutboxesOfOneTableInTwoDatabasesHaveSlotsOfTheirOwn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	table := schema + ".outbox"
	_, legacy := pgstore.DefaultNames("", table) // the publication's name, and the slots' before
	other, _ := pgstore.DefaultNames("postgres", table)
	takeSlotInAnotherDatabase(t, legacy)
	takeSlotInAnotherDatabase(t, other)

	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: table}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	slot := slotOf(t, db, table)
	require.NotEqual(t, legacy, slot)
	require.NotEqual(t, other, slot)
	s, err := pgstore.InspectLog(ctx, db, table)
	require.NoError(t, err)
	require.Equal(t, slot, s.Slot)
	require.True(t, s.SlotExists, "Migrate created this database's own slot")
	require.Empty(t, s.Problem)

	// The reader reads it: a message written now is handed over.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- storetest.ReadLog(rctx, st, storetest.LogConsumer{Deliver: func(_ context.Context, msgs []store.ClaimedMessage) *store.LogOutcome {
			out := &store.LogOutcome{}
			for _, m := range msgs {
				out.Delivered = append(out.Delivered, m.ID)
				select {
				case got <- string(m.Payload):
				default:
				}
			}
			return out
		}})
	}()
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "t", Payload: []byte("through its own slot")}))
	select {
	case p := <-got:
		require.Equal(t, "through its own slot", p)
	case err := <-done:
		t.Fatalf("the reader stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the reader handed nothing over")
	}
	cancel()
	<-done
}

// An outbox whose slot was made before slot names named the database keeps it: Migrate
// makes no second slot, and the reader and InspectLog name the old one.
func TestASlotNamedBeforeIsKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	table := schema + ".outbox"
	_, legacy := pgstore.DefaultNames("", table)
	_, err := db.ExecContext(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", legacy)
	require.NoError(t, err)
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: table}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	require.Equal(t, legacy, slotOf(t, db, table))
	var database string
	require.NoError(t, db.QueryRowContext(ctx, "SELECT current_database()").Scan(&database))
	fresh, _ := pgstore.DefaultNames(database, table)
	var n int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", fresh).Scan(&n))
	require.Zero(t, n, "no second slot")
	s, err := pgstore.InspectLog(ctx, db, table)
	require.NoError(t, err)
	require.Equal(t, legacy, s.Slot)
	require.True(t, s.SlotExists)
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
