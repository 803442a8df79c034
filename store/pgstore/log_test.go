package pgstore_test

import (
	"context"
	"database/sql"

	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/storetest"
)

// consumer records what a log reader hands it and acknowledges everything.
type consumer struct {
	mu       sync.Mutex
	got      []store.ClaimedMessage
	count    map[string]int
	statuses []store.LogStatus
}

func newConsumer() *consumer { return &consumer{count: map[string]int{}} }

func (c *consumer) LogConsumer() storetest.LogConsumer {
	return storetest.LogConsumer{
		Deliver: func(_ context.Context, msgs []store.ClaimedMessage) *store.LogOutcome {
			c.mu.Lock()
			defer c.mu.Unlock()
			out := &store.LogOutcome{}
			for _, m := range msgs {
				c.got = append(c.got, m)
				c.count[m.ID]++
				out.Delivered = append(out.Delivered, m.ID)
			}
			return out
		},
		Status: func(s store.LogStatus) {
			c.mu.Lock()
			c.statuses = append(c.statuses, s)
			c.mu.Unlock()
		},
	}
}

func (c *consumer) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.count)
}

func (c *consumer) lastStatus() store.LogStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.statuses) == 0 {
		return store.LogStatus{LagBytes: -2}
	}
	return c.statuses[len(c.statuses)-1]
}

func (c *consumer) waitFor(t *testing.T, n int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return c.distinct() >= n }, within, 10*time.Millisecond,
		"the log reader delivered %d of %d messages", c.distinct(), n)
}

// startReader runs ReadLog in the background; the returned function stops it and returns
// its error.
func startReader(st *sqlstore.Store, c interface{ LogConsumer() storetest.LogConsumer }) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- storetest.ReadLog(ctx, st, c.LogConsumer()) }()
	return func() error {
		cancel()
		return <-done
	}
}

func write(t *testing.T, st *sqlstore.Store, db *sql.DB, msgs ...store.Message) {
	t.Helper()
	tx, err := db.Begin()
	require.NoError(t, err)
	require.NoError(t, st.Write(context.Background(), tx, msgs...))
	require.NoError(t, tx.Commit())
}

func messages(prefix string, n int) []store.Message {
	out := make([]store.Message, n)
	for i := range out {
		out[i] = store.Message{Topic: "payments", Key: fmt.Sprintf("k%d", i%7), Payload: []byte(fmt.Sprintf("%s-%d", prefix, i))}
	}
	return out
}

// psql runs SQL through the psql client, another program than this library.
func psql(t *testing.T, sqlText string) {
	t.Helper()
	out, err := exec.Command("psql", dbtest.PostgresDSN(), "-v", "ON_ERROR_STOP=1", "-qc", sqlText).CombinedOutput()
	require.NoError(t, err, string(out))
}

func TestReadLogDeliversMessagesOfAnyWriterInCommitOrder(t *testing.T) {
	st, db := newStore(t)
	c := newConsumer()
	stop := startReader(st, c)
	defer func() { require.ErrorIs(t, stop(), context.Canceled) }()

	first := messages("api", 50)
	write(t, st, db, first...)
	// Another program writes a message with binary payload and headers, in its own
	// transaction, with the library's columns only.
	psql(t, "INSERT INTO "+st.Table()+` (id, topic, message_key, payload, headers, created_at)
		VALUES ('0190f3a2-7b1c-7000-8000-00000000a001', 'payments', 'pay-42', '\x00ff7b22'::bytea,
		        '{"event_type":"PaymentCompleted"}', '2026-11-26 10:00:00.123456+00')`)
	last := messages("api-late", 10)
	write(t, st, db, last...)

	c.waitFor(t, 61, 30*time.Second)
	c.mu.Lock()
	got := append([]store.ClaimedMessage(nil), c.got...)
	c.mu.Unlock()
	require.Len(t, got, 61, "no message twice")
	for i, m := range first {
		require.Equal(t, m.Payload, got[i].Payload, "commit order, then write order")
		require.Equal(t, m.Key, got[i].Key)
	}
	plain := got[50]
	require.Equal(t, "0190f3a2-7b1c-7000-8000-00000000a001", plain.ID)
	require.Equal(t, []byte{0x00, 0xff, 0x7b, 0x22}, plain.Payload)
	require.Equal(t, map[string]string{"event_type": "PaymentCompleted"}, plain.Headers)
	require.Equal(t, "pay-42", plain.Key)
	require.Equal(t, time.Date(2026, 11, 26, 10, 0, 0, 123456000, time.UTC), plain.CreatedAt.UTC())
	require.Equal(t, []byte("api-late-9"), got[60].Payload)

	require.Eventually(t, func() bool {
		list, err := st.List(context.Background(), &store.ListParams{State: store.Pending})
		require.NoError(t, err)
		return len(list.Messages) == 0
	}, 10*time.Second, 10*time.Millisecond, "delivered messages are marked")
	require.Eventually(t, func() bool { s := c.lastStatus(); return s.Reading && !s.CaughtUp.IsZero() && s.LagBytes >= 0 },
		10*time.Second, 50*time.Millisecond, "the reader reports that it caught up, and its lag")
}

// Each reason the log cannot be read is reported as ErrLogUnavailable with what to do.
func TestReadLogReportsWhyTheLogIsUnavailable(t *testing.T) {
	t.Run("slot dropped", func(t *testing.T) {
		// With ManualLogRecovery, as an operator asked: Migrate brings the slot back. (By
		// default the reader makes a new one: storetest's StartsAgainWhenItsPositionIsLost.)
		db, schema := dbtest.Postgres(t)
		st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox", ManualLogRecovery: true}))
		require.NoError(t, err)
		require.NoError(t, st.Migrate(context.Background()))
		slot := slotOf(t, st.DB(), st.QualifiedName())
		_, err = db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		require.NoError(t, err)
		for range 2 { // and again at the next try
			err = storetest.ReadLog(context.Background(), st, newConsumer().LogConsumer())
			require.ErrorIs(t, err, store.ErrLogUnavailable)
			require.ErrorContains(t, err, "run Migrate")
		}

		require.NoError(t, st.Migrate(context.Background()), "Migrate creates the slot again")
		c := newConsumer()
		stop := startReader(st, c)
		write(t, st, db, messages("a", 5)...)
		c.waitFor(t, 5, 10*time.Second)
		require.ErrorIs(t, stop(), context.Canceled)
	})
	t.Run("no replication attribute", func(t *testing.T) {
		st, db := newStore(t)
		role := strings.ReplaceAll(strings.TrimSuffix(st.QualifiedName(), ".outbox"), "outbox_test", "outbox_user")
		_, err := db.Exec("CREATE ROLE " + role + " LOGIN")
		require.NoError(t, err)
		defer db.Exec("DROP OWNED BY " + role + "; DROP ROLE " + role)
		schema := strings.TrimSuffix(st.QualifiedName(), ".outbox")
		_, err = db.Exec("GRANT USAGE ON SCHEMA " + schema + " TO " + role + "; GRANT SELECT, INSERT, UPDATE, DELETE ON " + st.Table() + " TO " + role)
		require.NoError(t, err)
		userDB, err := pgstore.Open(strings.Replace(dbtest.PostgresDSN(), "postgres@", role+"@", 1))
		require.NoError(t, err)
		defer userDB.Close()
		userStore, err := sqlstore.EngineOf(pgstore.New(userDB, pgstore.Config{Table: st.QualifiedName()}))
		require.NoError(t, err)
		err = storetest.ReadLog(context.Background(), userStore, newConsumer().LogConsumer())
		require.ErrorIs(t, err, store.ErrLogUnavailable)
		require.ErrorContains(t, err, "REPLICATION")
	})
	t.Run("not migrated", func(t *testing.T) {
		db, schema := dbtest.Postgres(t)
		st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox"}))
		require.NoError(t, err)
		err = storetest.ReadLog(context.Background(), st, newConsumer().LogConsumer())
		require.ErrorIs(t, err, store.ErrLogUnavailable)
	})
}

// slotOf is the replication slot of an outbox table.
func slotOf(t testing.TB, db *sql.DB, table string) string {
	t.Helper()
	slot, _, err := pgstore.Names(context.Background(), db, table)
	require.NoError(t, err)
	return slot
}

// A batch's rows are looked up as a range of seqs when they fill most of it: the rows of the
// range that are not the batch's (here one that a claim holds) tell nothing about it.
func TestFilterLogLooksAtTheBatchsRowsOnly(t *testing.T) {
	ctx := context.Background()
	st, db := newStore(t)
	ids, err := store.WriteIDs(ctx, st, db,
		store.Message{Topic: "t", Key: "a", Payload: []byte("1")},
		store.Message{Topic: "t", Key: "b", Payload: []byte("2")},
		store.Message{Topic: "t", Key: "c", Payload: []byte("3")})
	require.NoError(t, err)
	seqOf := map[string]int64{}
	rows, err := db.Query("SELECT id, seq FROM " + st.Table())
	require.NoError(t, err)
	for rows.Next() {
		var (
			id  string
			seq int64
		)
		require.NoError(t, rows.Scan(&id, &seq))
		seqOf[id] = seq
	}
	require.NoError(t, rows.Err())
	_, err = db.Exec("UPDATE "+st.Table()+" SET claim_token = 'another', claimed_until = now() + interval '1 minute' WHERE id = $1", ids[1])
	require.NoError(t, err)

	b := sqlstore.NewLogBatch([]sqlstore.LogMessage{
		{Seq: seqOf[ids[0]], Message: store.Message{ID: ids[0], Topic: "t", Key: "a"}},
		{Seq: seqOf[ids[2]], Message: store.Message{ID: ids[2], Topic: "t", Key: "c"}},
	}, nil)
	require.NoError(t, st.FilterLog(ctx, b, nil, false))
	var published []string
	for _, m := range b.Publish {
		published = append(published, m.ID)
	}
	require.Equal(t, []string{ids[0], ids[2]}, published)
	require.False(t, b.HeldBack, "nothing of the batch is held")
}

// A recorded batch's position reaches the server at once, not at the next periodic
// confirmation: with those an hour apart, the slot still moves within seconds. (The reader
// wakes for it, or at the server's next keepalive, which a server that has sent more than was
// confirmed sends soon: this checks that recording asks for the confirmation, not which of
// the two wakes the reader.)
func TestRecordedPositionIsConfirmedAtOnce(t *testing.T) {
	st, db := newStore(t)
	slot := slotOf(t, db, st.QualifiedName())
	position := func() string {
		var lsn sql.NullString
		require.NoError(t, db.QueryRow("SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&lsn))
		return lsn.String
	}
	before := position()
	t.Cleanup(pgstore.SetStatusEvery(time.Hour)) // after the reader stops: cleanups run last first
	c := newConsumer()
	stop := sync.OnceValue(startReader(st, c))
	t.Cleanup(func() { stop() })
	write(t, st, db, messages("now", 3)...)
	c.waitFor(t, 3, 30*time.Second)
	require.Eventually(t, func() bool { return position() != before }, 10*time.Second, 20*time.Millisecond,
		"the recorded batch's position is confirmed")
	require.ErrorIs(t, stop(), context.Canceled)
}
