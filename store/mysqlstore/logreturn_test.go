package mysqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/storetest"
)

// readingReported reports whether the reader ever said that it reads.
func (r *logRecorder) readingReported() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.statuses {
		if s.Reading {
			return true
		}
	}
	return false
}

// keyed returns n messages over 7 keys, with payloads prefix-i.
func keyed(prefix string, n int) []store.Message {
	out := make([]store.Message, n)
	for i := range out {
		out[i] = store.Message{ID: store.NewID(), Topic: "orders", Key: fmt.Sprintf("k%d", i%7), Payload: []byte(fmt.Sprintf("%s-%d", prefix, i))}
	}
	return out
}

// loseThePosition stores a position the binlog does not hold, as after the files that held it
// were purged (TestReturnToTheLogAfterAPurge in the dispatcher's tests purges for real; a purge
// is server-wide).
func loseThePosition(t *testing.T, db *sql.DB) {
	t.Helper()
	var pos string
	require.NoError(t, db.QueryRow("SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos))
	f := strings.Split(strings.Split(pos, ",")[0], "-")
	_, err := db.Exec("UPDATE outbox_log_position SET gtid_set = ?", f[0]+"-"+f[1]+"-999999999999")
	require.NoError(t, err)
}

func positionRows(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM outbox_log_position").Scan(&n))
	return n
}

// sweep claims what a dispatcher's sweep beside a catching-up reader claims, marks it
// delivered, and returns the payloads in claim order, until a claim finds nothing.
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

func pendingCount(t *testing.T, st *sqlstore.Store) int {
	t.Helper()
	res, err := st.List(context.Background(), &store.ListParams{State: store.Pending, Limit: 10000})
	require.NoError(t, err)
	return len(res.Messages)
}

// When the binlog no longer holds the stored position, the reader's first try says so (it
// never reports that it reads) and deletes the position; the next starts from the server's
// current position. Messages written meanwhile are pending in the table: until they are
// delivered, the reader hands the newer ones over to the sweep, then publishes from the
// binlog again.
func TestReadLogStartsAgainWhenItsPositionIsLost(t *testing.T) {
	db, _ := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	rec := &logRecorder{}
	reader := startReader(t, st, rec)
	write(t, db, st, keyed("a", 21)...)
	require.Eventually(t, func() bool { return len(rec.delivered()) == 21 }, 20*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, reader.stop(t), context.Canceled)

	write(t, db, st, keyed("b", 21)...) // while no reader runs
	loseThePosition(t, db)

	lost := &logRecorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := storetest.ReadLog(ctx, st, lost.consumer())
	require.ErrorIs(t, err, store.ErrLogUnavailable)
	require.ErrorContains(t, err, "no longer holds")
	require.ErrorContains(t, err, "starts again from the server's current position at its next try")
	require.False(t, lost.readingReported(), "a reader whose position is lost never reports that it reads")
	require.Zero(t, positionRows(t, db), "the lost position is deleted")

	again := &logRecorder{}
	startReader(t, st, again)
	require.Eventually(t, again.readingReported, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, positionRows(t, db), "the current position is stored")

	write(t, db, st, keyed("c", 21)...) // the same keys: after the b messages
	require.Eventually(t, func() bool {
		var handedOver int
		require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM outbox WHERE held = 1").Scan(&handedOver))
		return handedOver == 21
	}, 20*time.Second, 10*time.Millisecond, "the reader hands the new messages over to the sweep")
	require.Empty(t, again.delivered(), "nothing is published from the binlog ahead of the messages it does not carry")
	require.Equal(t, 42, pendingCount(t, st))
	swept := sweep(t, st)
	require.Len(t, swept, 42)
	for i, p := range swept[:21] {
		require.Equal(t, fmt.Sprintf("b-%d", i), p, "write order")
	}

	write(t, db, st, keyed("d", 21)...)
	require.Eventually(t, func() bool { return len(again.delivered()) == 21 }, 20*time.Second, 10*time.Millisecond,
		"caught up, the reader publishes from the binlog again")
	require.Eventually(t, func() bool { return pendingCount(t, st) == 0 }, 10*time.Second, 10*time.Millisecond, "delivered messages are marked")
}

// With ManualLogRecovery the reader keeps saying that the position is lost, and leaves it.
func TestReadLogLeavesALostPositionToTheOperator(t *testing.T) {
	db, _ := dbtest.MySQL(t)
	newLogStore(t, db, "")
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{ManualLogRecovery: true}))
	require.NoError(t, err)
	loseThePosition(t, db)
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := storetest.ReadLog(ctx, st, (&logRecorder{}).consumer())
		cancel()
		require.ErrorIs(t, err, store.ErrLogUnavailable)
		require.ErrorContains(t, err, "delete the row of")
		require.Equal(t, 1, positionRows(t, db))
	}
}
