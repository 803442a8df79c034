package pgstore_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
	"github.com/outboxgo/outbox/store/storetest"
)

func newLogOnlyStore(t *testing.T) (*sqlstore.Store, string) {
	t.Helper()
	db, schema := dbtest.Postgres(t)
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox", LogOnly: true}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st, schema
}

func rowCount(t *testing.T, st *sqlstore.Store) int {
	t.Helper()
	var n int
	require.NoError(t, st.DB().QueryRow("SELECT count(*) FROM "+st.Table()).Scan(&n))
	return n
}

// Log-only writes leave no row behind, and the reader hands over every message as written:
// ids, keys, headers, and payloads large enough for Postgres to keep them out of line (TOAST).
func TestLogOnlyWritesReachTheReaderAndLeaveTheTableEmpty(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	db := st.DB()
	big := make([]byte, 300<<10) // random, so that compression cannot keep it inline
	_, _ = rand.Read(big)
	var want []store.Message
	for i := range 3 {
		msgs := messages(fmt.Sprint("tx", i), 100)
		msgs[0].ID = fmt.Sprintf("own-id-%d", i)
		msgs[1].Headers = map[string]string{"tenant": "acme", "n": fmt.Sprint(i)}
		msgs[2].Payload = big
		write(t, st, db, msgs...)
		want = append(want, msgs...)
	}
	require.Zero(t, rowCount(t, st), "log-only rows are deleted in the writing transaction")

	c := newConsumer()
	stop := startReader(st, c)
	defer func() { require.ErrorIs(t, stop(), context.Canceled) }()
	c.waitFor(t, len(want), 15*time.Second)

	c.mu.Lock()
	got := c.got
	c.mu.Unlock()
	require.Len(t, got, len(want), "each message once")
	for i, m := range got {
		require.Equal(t, want[i].Topic, m.Topic)
		require.Equal(t, want[i].Key, m.Key)
		require.Equal(t, want[i].Payload, m.Payload, "payload of message %d", i)
		for k, v := range want[i].Headers {
			require.Equal(t, v, m.Headers[k])
		}
	}
	require.Equal(t, "own-id-0", got[0].ID)
	require.Zero(t, rowCount(t, st), "a delivered log-only message leaves no row to mark")
}

// outcomeConsumer fails one message, parks another and leaves the rest of the failed one's
// key unattempted, as the dispatcher does.
type outcomeConsumer struct {
	fail, park string // payloads
	mu         sync.Mutex
	delivered  map[string]int // by payload
	handed     map[string]int // by payload, whatever became of it
}

func (c *outcomeConsumer) LogConsumer() storetest.LogConsumer {
	return storetest.LogConsumer{Deliver: func(_ context.Context, msgs []store.ClaimedMessage) *store.LogOutcome {
		c.mu.Lock()
		defer c.mu.Unlock()
		out := &store.LogOutcome{}
		blocked := map[string]bool{}
		for _, m := range msgs {
			c.handed[string(m.Payload)]++
			switch p := string(m.Payload); {
			case blocked[m.Key]:
				out.Unattempted = append(out.Unattempted, m.ID)
			case p == c.fail:
				out.Failures = append(out.Failures, store.Failure{ID: m.ID, Error: "broker hiccup", RetryAfter: time.Minute})
				blocked[m.Key] = true
			case p == c.park:
				out.Failures = append(out.Failures, store.Failure{ID: m.ID, Error: "message too large", Park: true})
			default:
				c.delivered[p]++
				out.Delivered = append(out.Delivered, m.ID)
			}
		}
		return out
	}}
}

// A log-only message that fails is put into the table for polling to retry, with the later
// messages of its key behind it; a parked one waits there for an operator. The reader, which
// sees those inserts in the log too, does not hand them over again.
func TestLogOnlyFailuresMoveToTheTable(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	msgs := messages("m", 14) // keys k0..k6, two messages each
	c := &outcomeConsumer{fail: "m-0", park: "m-1", delivered: map[string]int{}, handed: map[string]int{}}
	stop := startReader(st, c)
	defer func() { require.ErrorIs(t, stop(), context.Canceled) }()
	write(t, st, st.DB(), msgs...)
	// After the outcome, one more transaction: once it is delivered, the reader has also
	// read past the inserts that recorded the outcome.
	write(t, st, st.DB(), store.Message{Topic: "payments", Key: "later", Payload: []byte("last")})
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.delivered["last"] == 1
	}, 15*time.Second, 10*time.Millisecond)

	ctx := context.Background()
	pending, err := st.List(ctx, &store.ListParams{State: store.Pending, Limit: 10})
	require.NoError(t, err)
	require.Len(t, pending.Messages, 2, "the failed message and the later one of its key")
	require.Equal(t, []byte("m-0"), pending.Messages[0].Payload)
	require.Equal(t, 1, pending.Messages[0].Attempts)
	require.Equal(t, "broker hiccup", pending.Messages[0].LastError)
	require.Equal(t, []byte("m-7"), pending.Messages[1].Payload)
	require.Equal(t, msgs[0].Key, pending.Messages[1].Key)
	parked, err := st.List(ctx, &store.ListParams{State: store.Parked, Limit: 10})
	require.NoError(t, err)
	require.Len(t, parked.Messages, 1)
	require.Equal(t, []byte("m-1"), parked.Messages[0].Payload)
	require.Equal(t, "message too large", parked.Messages[0].LastError)

	c.mu.Lock()
	require.Len(t, c.delivered, 12, "m-2..m-6, m-8..m-13 and last, each once")
	for p, n := range c.delivered {
		require.Equal(t, 1, n, p)
	}
	require.Equal(t, 1, c.handed["m-0"], "the reader saw the failed message's insert into the table, and left it to polling")
	require.Equal(t, 1, c.handed["m-1"])
	c.mu.Unlock()

	// Polling takes over the failed message once it is due, with m-7 behind it.
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute, OlderThan: time.Nanosecond})
	require.NoError(t, err)
	require.Empty(t, res.Messages, "the failed message waits for its retry time")
	_, err = st.DB().Exec("UPDATE " + st.Table() + " SET next_attempt_at = now() - interval '1 second'")
	require.NoError(t, err)
	res, err = st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute, OlderThan: time.Nanosecond})
	require.NoError(t, err)
	require.Len(t, res.Messages, 2)
	require.Equal(t, []byte("m-0"), res.Messages[0].Payload)
	require.Equal(t, []byte("m-7"), res.Messages[1].Payload)
}

// Without its slot, a log-only write would be lost: Write refuses it, writes nothing, and
// says what is missing; Check says so too. Migrate brings the slot back.
func TestLogOnlyWriteRefusedWithoutTheSlot(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	ctx := context.Background()
	slot := slotOf(t, st.DB(), st.QualifiedName())
	_, err := st.DB().Exec("SELECT pg_drop_replication_slot($1)", slot)
	require.NoError(t, err)

	tx, err := st.DB().Begin()
	require.NoError(t, err)
	err = st.Write(ctx, tx, messages("lost", 3)...)
	require.NoError(t, tx.Rollback())
	require.ErrorIs(t, err, store.ErrLogUnavailable)
	_, pub := pgstore.DefaultNames("", st.QualifiedName())
	require.ErrorContains(t, err, "replication slot "+pub+"_<the first 8 hex digits of the MD5 of the database's name> (or "+pub+", made before)")
	require.Zero(t, rowCount(t, st))

	err = st.Check(ctx)
	require.ErrorIs(t, err, store.ErrLogUnavailable)
	require.ErrorContains(t, err, "replication slot "+pub+"_")

	require.NoError(t, st.Migrate(ctx))
	require.NoError(t, st.Check(ctx))
	write(t, st, st.DB(), messages("kept", 3)...)
	c := newConsumer()
	stop := startReader(st, c)
	defer func() { require.ErrorIs(t, stop(), context.Canceled) }()
	c.waitFor(t, 3, 15*time.Second)
}

// Migrate of a log-only outbox fails where the log cannot carry its messages (here, its
// slot's name is taken by another database's); stores whose log cannot be checked at write
// time refuse log-only writes outright.
func TestLogOnlyNeedsTheLog(t *testing.T) {
	db, schema := dbtest.Postgres(t)
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox", LogOnly: true}))
	require.NoError(t, err)
	slot := slotOf(t, st.DB(), st.QualifiedName())
	takeSlotInAnotherDatabase(t, slot)

	err = st.Migrate(context.Background())
	require.ErrorIs(t, err, store.ErrLogUnavailable)
	_, pub := pgstore.DefaultNames("", st.QualifiedName())
	require.ErrorContains(t, err, "replication slot "+pub+"_")

	sdb, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	defer sdb.Close()
	_, err = sqlstore.EngineOf(sqlitestore.New(sdb, sqlitestore.Config{LogOnly: true}))
	require.ErrorContains(t, err, "Config.LogOnly: the sqlite store cannot check")
}

// A batch of log-only messages is published without a lookup of its rows and keys while no
// row holds a key: one probe says so. A held earlier message of a key, a row already recorded
// for a message of the batch, or with StrictOrder a parked message of a key, sends the batch
// through the lookup, which hands the key over or skips the message.
func TestLogOnlyBatchesAreLookedUpOnlyWhenARowHoldsThem(t *testing.T) {
	st, schema := newLogOnlyStore(t)
	strict, err := sqlstore.EngineOf(pgstore.New(st.DB(), pgstore.Config{Table: schema + ".outbox", LogOnly: true, StrictOrder: true}))
	require.NoError(t, err)
	ctx := context.Background()
	exec := func(q string) {
		t.Helper()
		_, err := st.DB().Exec(q)
		require.NoError(t, err)
	}
	// filter filters a batch of log-only messages with these seqs and keys, and returns the
	// seqs it publishes and how many lookups it took.
	filter := func(st *sqlstore.Store, seqs []int64, keys ...string) (published []int64, lookups int64) {
		t.Helper()
		msgs := make([]sqlstore.LogMessage, len(seqs))
		for i, seq := range seqs {
			msgs[i] = sqlstore.LogMessage{Seq: seq, LogOnly: true, Message: store.Message{
				ID: fmt.Sprint("m-", seq), Topic: "payments", Key: keys[i], Payload: []byte("p")}}
		}
		before := st.LogLookups()
		b := sqlstore.NewLogBatch(msgs, nil)
		require.NoError(t, st.FilterLog(ctx, b, nil, false))
		for _, m := range b.Publish {
			published = append(published, msgs[slices.IndexFunc(msgs, func(l sqlstore.LogMessage) bool { return l.ID == m.ID })].Seq)
		}
		return published, st.LogLookups() - before
	}

	published, lookups := filter(st, []int64{1001, 1002, 1003}, "k1", "k2", "k1")
	require.Equal(t, []int64{1001, 1002, 1003}, published, "nothing held: all of them")
	require.Zero(t, lookups, "nothing held: no lookup")

	exec("INSERT INTO " + st.Table() + " (id, topic, message_key, payload, created_at, attempts, next_attempt_at)" +
		" VALUES ('failed-k1', 'payments', 'k1', 'x', now(), 1, now() + interval '1 hour')")
	published, lookups = filter(st, []int64{2001, 2002}, "k1", "k2")
	require.Equal(t, []int64{2002}, published, "k1 waits behind its failed message")
	require.EqualValues(t, 1, lookups)
	exec("DELETE FROM " + st.Table())

	exec("INSERT INTO " + st.Table() + " (seq, id, topic, message_key, payload, created_at, state)" +
		" OVERRIDING SYSTEM VALUE VALUES (3001, 'm-3001', 'payments', 'k3', 'x', now(), 'parked')")
	published, lookups = filter(st, []int64{3001, 3002}, "k3", "k4")
	require.Equal(t, []int64{3002}, published, "a message whose outcome is recorded already stays where it is")
	require.EqualValues(t, 1, lookups)

	published, lookups = filter(st, []int64{4001, 4002}, "k3", "k4")
	require.Equal(t, []int64{4001, 4002}, published, "a parked message holds no key by default")
	require.Zero(t, lookups)
	published, lookups = filter(strict, []int64{4001, 4002}, "k3", "k4")
	require.Equal(t, []int64{4002}, published, "with StrictOrder, k3 waits behind its parked message")
	require.EqualValues(t, 1, lookups)
}

// A log-only write is a logical message per outbox message: the table sees no insert at all
// (Postgres counts the writing transaction's own inserts), and each message takes a seq from
// the table's sequence, where a row written later, by a failure, takes its own.
func TestLogOnlyWritesTouchNoRow(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	ctx := context.Background()
	seqs := func() (n int64) {
		require.NoError(t, st.DB().QueryRow("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "+sequenceOf(t, st)).Scan(&n))
		return n
	}
	before := seqs()
	tx, err := st.DB().Begin()
	require.NoError(t, err)
	defer tx.Rollback() // an open transaction would hold up the next test's slot
	want := messages("w", 20)
	require.NoError(t, st.Write(ctx, tx, want...))
	var inserted int64
	require.NoError(t, tx.QueryRow("SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relid = $1::regclass", st.Table()).Scan(&inserted))
	require.Zero(t, inserted, "a log-only write inserts no row")
	require.NoError(t, tx.Commit())
	require.Equal(t, before+int64(len(want)), seqs(), "one seq per message")

	c := newConsumer()
	stop := startReader(st, c)
	defer func() { require.ErrorIs(t, stop(), context.Canceled) }()
	c.waitFor(t, len(want), 15*time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.got {
		require.Equal(t, want[i].Payload, m.Payload, "in the order written")
		require.WithinDuration(t, time.Now(), m.CreatedAt, time.Minute, "stamped by the database's clock")
	}
}

// What a log-only Write refuses, it refuses whole, leaving the caller's transaction usable:
// an id given twice, and an id a row of the table holds (a failed log-only message waits
// there). Nothing is written: the sequence does not move.
func TestLogOnlyWriteRefusesTakenIDs(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	ctx := context.Background()
	_, err := st.DB().Exec("INSERT INTO " + st.Table() + " (id, topic, payload, created_at, state) VALUES ('taken', 'payments', 'x', now(), 'parked')")
	require.NoError(t, err)
	var before, after int64
	require.NoError(t, st.DB().QueryRow("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "+sequenceOf(t, st)).Scan(&before))

	tx, err := st.DB().Begin()
	require.NoError(t, err)
	defer tx.Rollback()
	twice := messages("twice", 3)
	twice[0].ID, twice[2].ID = "same", "same"
	require.ErrorIs(t, st.Write(ctx, tx, twice...), store.ErrDuplicateID)
	taken := messages("taken", 3)
	taken[1].ID = "taken"
	err = st.Write(ctx, tx, taken...)
	require.ErrorIs(t, err, store.ErrDuplicateID)
	require.ErrorContains(t, err, "an id is taken")
	// More messages than one INSERT of rows holds: still refused whole.
	many := messages("many", 14000)
	many[len(many)-1].ID = "taken"
	require.ErrorIs(t, st.Write(ctx, tx, many...), store.ErrDuplicateID)
	require.NoError(t, st.Write(ctx, tx, messages("fine", 2)...), "the transaction stays usable")
	require.NoError(t, tx.Commit())
	require.NoError(t, st.DB().QueryRow("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "+sequenceOf(t, st)).Scan(&after))
	require.Equal(t, before+2, after, "only the accepted write took seqs")
}

// A logical message of the outbox's prefix that the reader cannot read stops it with an
// error that says why, rather than being skipped: the log is its only copy. Other prefixes
// are other programs' messages, and are passed over.
func TestLogOnlyReaderStopsAtAMessageItCannotRead(t *testing.T) {
	st, _ := newLogOnlyStore(t)
	psql(t, "SELECT pg_logical_emit_message(true, 'someone-else', 'hello'::bytea)")
	write(t, st, st.DB(), messages("before", 3)...)
	psql(t, "SELECT pg_logical_emit_message(true, 'outbox:' || '"+st.Table()+"'::regclass::oid, '\\x02'::bytea || int8send(1) || int8send(0))")
	c := newConsumer()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := storetest.ReadLog(ctx, st, c.LogConsumer())
	require.ErrorContains(t, err, "log-only message of format 2")
	require.Equal(t, 3, c.distinct(), "what came before is delivered")
}

// sequenceOf is the name of the sequence of the outbox's seq column.
func sequenceOf(t *testing.T, st *sqlstore.Store) string {
	t.Helper()
	var name string
	require.NoError(t, st.DB().QueryRow("SELECT pg_get_serial_sequence($1, 'seq')", st.Table()).Scan(&name))
	return name
}

// A log-only writer needs the sequence's USAGE beyond the table's rights: Check says so, and
// Write is refused with store.ErrPermission, writing nothing. Granted it, both pass.
func TestLogOnlyCheckNamesTheSequenceRight(t *testing.T) {
	ctx := context.Background()
	owner, schema := newLogOnlyStore(t)
	db := owner.DB()
	writerDB, role := openAsRole(t, db, "outbox_writer", "GRANT USAGE ON SCHEMA "+schema+" TO %[1]s",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON "+owner.Table()+" TO %[1]s")
	writer, err := sqlstore.EngineOf(pgstore.New(writerDB, pgstore.Config{Table: schema + ".outbox", LogOnly: true}))
	require.NoError(t, err)
	err = writer.Check(ctx)
	require.ErrorIs(t, err, store.ErrPermission)
	require.ErrorContains(t, err, "USAGE on its sequence")
	tx, err := writerDB.Begin()
	require.NoError(t, err)
	err = writer.Write(ctx, tx, messages("w", 2)...)
	require.ErrorIs(t, err, store.ErrPermission)
	require.NoError(t, tx.Rollback())

	_, err = db.Exec("GRANT USAGE ON SEQUENCE " + sequenceOf(t, owner) + " TO " + role)
	require.NoError(t, err)
	require.NoError(t, writer.Check(ctx))
	tx, err = writerDB.Begin()
	require.NoError(t, err)
	require.NoError(t, writer.Write(ctx, tx, messages("w", 2)...))
	require.NoError(t, tx.Commit())
}
