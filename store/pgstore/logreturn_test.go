package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/storetest"
)

// readingReported reports whether c was ever told that its reader reads.
func (c *consumer) readingReported() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.statuses {
		if s.Reading {
			return true
		}
	}
	return false
}

// sweep claims what a dispatcher's sweep beside a catching-up reader claims (handed-over
// messages, and those pending from before the reader's position), marks it delivered, and
// returns the payloads in claim order; it stops when a claim finds nothing.
func sweep(t *testing.T, st *sqlstore.Store) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for {
		res, err := st.Claim(ctx, &store.ClaimParams{Limit: 100, Lease: time.Minute, OlderThan: 100 * 365 * 24 * time.Hour})
		require.NoError(t, err)
		if len(res.Messages) == 0 {
			return out
		}
		ids := make([]string, len(res.Messages))
		for i, m := range res.Messages {
			ids[i] = m.ID
			out = append(out, string(m.Payload))
		}
		require.NoError(t, st.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids}))
	}
}

// pending counts the pending messages.
func pending(t *testing.T, st *sqlstore.Store) int {
	t.Helper()
	res, err := st.List(context.Background(), &store.ListParams{State: store.Pending, Limit: 10000})
	require.NoError(t, err)
	return len(res.Messages)
}

// A slot dropped under a reader is created again with no operator: the reader's first try
// says so (ErrLogUnavailable, so that dispatchers poll; it never reports that it reads), and
// the next creates the slot and reads from it. Messages written while no slot existed are
// pending in the table; until they are delivered, the reader hands the newer messages over
// to the sweep rather than publish them ahead of them, and then publishes from the log again.
func TestReadLogCreatesALostSlotAgain(t *testing.T) {
	st, db := newStore(t)
	slot := slotOf(t, st.DB(), st.QualifiedName())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	first := newConsumer()
	done := make(chan error, 1)
	go func() { done <- storetest.ReadLog(ctx, st, first.LogConsumer()) }()
	write(t, st, db, messages("a", 21)...)
	first.waitFor(t, 21, 15*time.Second)
	require.Eventually(t, func() bool {
		db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot)
		_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("ReadLog did not return after its slot was dropped")
	}

	// Written while there is no slot: no log carries them.
	write(t, st, db, messages("b", 21)...)

	// The first try says what happens; a try that found the slot gone while reading may have
	// said it already.
	second := newConsumer()
	err := storetest.ReadLog(ctx, st, second.LogConsumer())
	if err != nil {
		require.ErrorIs(t, err, store.ErrLogUnavailable)
		require.ErrorContains(t, err, "creates it at its next try")
		require.False(t, second.readingReported(), "a reader that cannot read never reports that it reads")
	}

	third := newConsumer()
	go func() { done <- storetest.ReadLog(ctx, st, third.LogConsumer()) }()
	require.Eventually(t, third.readingReported, 15*time.Second, 10*time.Millisecond, "the reader reads from a new slot")
	var exists bool
	require.NoError(t, db.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&exists))
	require.True(t, exists)

	// The same keys again: the log carries them, but the messages written without a slot
	// come first, and the sweep has them.
	write(t, st, db, messages("c", 21)...)
	require.Eventually(t, func() bool {
		var handedOver int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM "+st.Table()+" WHERE held = 1").Scan(&handedOver))
		return handedOver == 21
	}, 15*time.Second, 10*time.Millisecond, "the reader hands the new messages over to the sweep")
	require.Zero(t, third.distinct(), "nothing is published from the log ahead of the messages it does not carry")
	require.Equal(t, 42, pending(t, st))
	swept := sweep(t, st)
	require.Len(t, swept, 42)
	for i, p := range swept[:21] {
		require.Equal(t, messages("b", 21)[i].Payload, []byte(p), "write order")
	}

	// Caught up: the log publishes again.
	write(t, st, db, messages("d", 21)...)
	third.waitFor(t, 21, 15*time.Second)
	require.Eventually(t, func() bool { return pending(t, st) == 0 }, 10*time.Second, 10*time.Millisecond, "delivered messages are marked")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}
