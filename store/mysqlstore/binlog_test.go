package mysqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/storetest"
)

// logRecorder is a LogConsumer that publishes nothing and acknowledges every message, or
// fails those that fail says, as a dispatcher would: the later messages of a failed key in
// the same call are left unattempted.
type logRecorder struct {
	fail  func(store.ClaimedMessage) bool
	batch int           // the consumer's batch size; 0 for the default
	pause time.Duration // per Deliver call

	mu       sync.Mutex
	msgs     []store.ClaimedMessage // acknowledged
	sizes    []int                  // of each Deliver call
	failed   []string
	statuses []store.LogStatus
}

func (r *logRecorder) consumer() storetest.LogConsumer {
	return storetest.LogConsumer{
		BatchSize: r.batch,
		Deliver: func(_ context.Context, msgs []store.ClaimedMessage) *store.LogOutcome {
			time.Sleep(r.pause)
			r.mu.Lock()
			defer r.mu.Unlock()
			r.sizes = append(r.sizes, len(msgs))
			out := &store.LogOutcome{}
			failedKeys := map[string]bool{}
			for _, m := range msgs {
				switch {
				case m.Key != "" && failedKeys[m.Key]:
					out.Unattempted = append(out.Unattempted, m.ID)
				case r.fail != nil && r.fail(m):
					failedKeys[m.Key] = true
					r.failed = append(r.failed, m.ID)
					out.Failures = append(out.Failures, store.Failure{ID: m.ID, Error: "refused", RetryAfter: time.Hour})
				default:
					r.msgs = append(r.msgs, m)
					out.Delivered = append(out.Delivered, m.ID)
				}
			}
			return out
		},
		Status: func(s store.LogStatus) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.statuses = append(r.statuses, s)
		},
	}
}

func (r *logRecorder) delivered() []store.ClaimedMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]store.ClaimedMessage(nil), r.msgs...)
}

func (r *logRecorder) status() (store.LogStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.statuses) == 0 {
		return store.LogStatus{}, false
	}
	return r.statuses[len(r.statuses)-1], true
}

func (r *logRecorder) reading() bool {
	s, ok := r.status()
	return ok && s.Reading
}

// runningReader is a ReadLog call running in a goroutine.
type runningReader struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func startReader(t *testing.T, st *sqlstore.Store, rec *logRecorder) *runningReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningReader{cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- storetest.ReadLog(ctx, st, rec.consumer()) }()
	t.Cleanup(func() { rr.stop(t) })
	return rr
}

// stop cancels the reader and returns what ReadLog returned.
func (rr *runningReader) stop(t *testing.T) error {
	rr.once.Do(func() {
		rr.cancel()
		select {
		case rr.err = <-rr.done:
		case <-time.After(30 * time.Second):
			t.Error("ReadLog did not return within 30s of its context ending")
		}
	})
	return rr.err
}

func newLogStore(t *testing.T, db *sql.DB, table string) *sqlstore.Store {
	t.Helper()
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{Table: table}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st
}

func write(t *testing.T, db *sql.DB, st *sqlstore.Store, msgs ...store.Message) {
	t.Helper()
	tx, err := db.Begin()
	require.NoError(t, err)
	require.NoError(t, st.Write(context.Background(), tx, msgs...))
	require.NoError(t, tx.Commit())
}

// mariadbCLI runs statements through the mariadb command-line client, as a program that does
// not use this library would write.
func mariadbCLI(t *testing.T, dsn, statements string) {
	t.Helper()
	bin, err := exec.LookPath("mariadb")
	if err != nil {
		if bin, err = exec.LookPath("mysql"); err != nil {
			t.Skip("no mariadb or mysql client installed")
		}
	}
	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	host, port, err := net.SplitHostPort(cfg.Addr)
	require.NoError(t, err)
	args := []string{"-h", host, "-P", port, "-u", cfg.User}
	if cfg.Passwd != "" {
		args = append(args, "-p"+cfg.Passwd)
	}
	args = append(args, cfg.DBName, "-e", statements)
	out, err := exec.Command(bin, args...).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// ids returns the message ids in order.
func ids(msgs []store.ClaimedMessage) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func TestReadLogKeepsKeyOrderAfterAFailure(t *testing.T) {
	t.Parallel()
	db, dsn := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	// When the first message of a key fails, its successor and a message of another key are
	// written at once, before the failure is recorded: the log reads them in the next batch,
	// which must not overtake the failure.
	var (
		followUps sync.Map // id of a failing message -> the messages to write then
		writeErrs = make(chan error, 100)
	)
	rec := &logRecorder{fail: func(m store.ClaimedMessage) bool {
		if string(m.Payload) != "fail" {
			return false
		}
		if v, ok := followUps.LoadAndDelete(m.ID); ok {
			for _, f := range v.([]store.Message) {
				tx, err := db.Begin()
				if err == nil {
					err = errors.Join(st.Write(context.Background(), tx, f), tx.Commit())
				}
				if err != nil {
					writeErrs <- err
				}
			}
		}
		return true
	}}
	// Recording takes long, as a large batch's would: the next batch is read meanwhile.
	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	t.Cleanup(mysqlstore.SetRecordHook(func(schema string) {
		if schema == cfg.DBName {
			time.Sleep(200 * time.Millisecond)
		}
	}))
	startReader(t, st, rec)
	// Streaming at the end of the log (starting from a GTID takes the server a scan of the
	// binlog file).
	require.Eventually(t, func() bool { s, _ := rec.status(); return !s.CaughtUp.IsZero() }, 20*time.Second, 10*time.Millisecond)

	const keys = 5
	var first, second, others []string
	for k := range keys {
		key := fmt.Sprintf("key-%d", k)
		m1 := store.Message{ID: store.NewID(), Topic: "t", Key: key, Payload: []byte("fail")}
		m2 := store.Message{ID: store.NewID(), Topic: "t", Key: key, Payload: []byte("ok")}
		m3 := store.Message{ID: store.NewID(), Topic: "t", Key: "other-" + key, Payload: []byte("ok")}
		followUps.Store(m1.ID, []store.Message{m2, m3})
		write(t, db, st, m1)
		first, second, others = append(first, m1.ID), append(second, m2.ID), append(others, m3.ID)
		require.Eventually(t, func() bool { return len(rec.delivered()) == k+1 }, 20*time.Second, time.Millisecond)
	}
	require.Len(t, writeErrs, 0)
	require.Equal(t, others, ids(rec.delivered()))

	state := func(id string) (s string, attempts int, held bool) {
		require.NoError(t, db.QueryRow("SELECT state, attempts, held FROM outbox WHERE id = ?", id).Scan(&s, &attempts, &held))
		return s, attempts, held
	}
	require.Eventually(t, func() bool {
		for k := range keys {
			s1, n1, h1 := state(first[k])
			s2, n2, h2 := state(second[k])
			if s1 != "pending" || n1 != 1 || !h1 || s2 != "pending" || n2 != 0 || !h2 {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond, "each first message waits for its retry, the second is polling's, behind it")
}

type grantUser struct{ name, dsn string }

// createUser creates a user with the given grants (each "PRIVILEGES ON what"), dropped when
// the test ends, and returns a DSN for it on the test database.
func createUser(t *testing.T, admin *sql.DB, dsn string, grants ...string) grantUser {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	user := dbtest.Name("outbox_u")
	_, err = admin.Exec("CREATE USER '" + user + "'@'%'")
	require.NoError(t, err)
	t.Cleanup(func() { admin.Exec("DROP USER '" + user + "'@'%'") })
	for _, g := range grants {
		g = strings.ReplaceAll(g, "{db}", "`"+cfg.DBName+"`")
		_, err := admin.Exec("GRANT " + g + " TO '" + user + "'@'%'")
		require.NoError(t, err, g)
	}
	cfg.User, cfg.Passwd = user, ""
	return grantUser{name: user, dsn: cfg.FormatDSN()}
}

func TestReadLogDeliversCommittedMessagesInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, dsn := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	other := newLogStore(t, db, "other_outbox") // same database and columns: not ours
	rec := &logRecorder{}
	startReader(t, st, rec)
	require.Eventually(t, rec.reading, 20*time.Second, 10*time.Millisecond)

	var want []string
	// 1. Through the library: non-UTF-8 payload, headers, key; and an empty message.
	first := store.Message{ID: store.NewID(), Topic: "orders", Key: "order-1", Payload: []byte{0xff, 0xfe, 0x00, 'a', 0x80},
		Headers: map[string]string{"trace": "abc", "ünï": "cödé"}}
	empty := store.Message{ID: store.NewID(), Topic: "orders"}
	write(t, db, st, first, empty)
	want = append(want, first.ID, empty.ID)

	// 2. Rolled back: never delivered. Written to another outbox table: not this reader's.
	tx, err := db.Begin()
	require.NoError(t, err)
	rolledBack := store.Message{ID: store.NewID(), Topic: "orders"}
	require.NoError(t, st.Write(ctx, tx, rolledBack))
	require.NoError(t, tx.Rollback())
	foreign := store.Message{ID: store.NewID(), Topic: "orders"}
	write(t, db, other, foreign)

	// 3. Through the mariadb client: the repository's example insert, and a transaction of
	// two rows with a binary payload.
	example, err := os.ReadFile("../../testdata/insert_message.mysql.sql")
	require.NoError(t, err)
	mariadbCLI(t, dsn, strings.ReplaceAll(string(example), "{{table}}", "outbox"))
	want = append(want, "0190f3a2-7b1c-7000-8000-00000000a001")
	cliIDs := []string{store.NewID(), store.NewID()}
	mariadbCLI(t, dsn, fmt.Sprintf(`BEGIN;
		INSERT INTO outbox (id, topic, message_key, payload, headers, created_at) VALUES ('%s', 'payments', 'pay-7', X'00FF80FE', '{"a":"1"}', UTC_TIMESTAMP(6));
		INSERT INTO outbox (id, topic, payload, headers, created_at) VALUES ('%s', 'payments', '', '{}', UTC_TIMESTAMP(6));
		COMMIT;`, cliIDs[0], cliIDs[1]))
	want = append(want, cliIDs...)

	// 4. A large payload, and one transaction of more messages than a batch holds.
	big := store.Message{ID: store.NewID(), Topic: "blobs", Payload: bytes.Repeat([]byte{0xa5, 0x00, 0x5a}, 200_000)}
	write(t, db, st, big)
	want = append(want, big.ID)
	many := make([]store.Message, 1200)
	for i := range many {
		many[i] = store.Message{ID: store.NewID(), Topic: "many", Key: fmt.Sprintf("k%d", i%7), Payload: []byte{byte(i)}}
		want = append(want, many[i].ID)
	}
	write(t, db, st, many...)
	wrote := time.Now()

	require.Eventually(t, func() bool { return len(rec.delivered()) >= len(want) }, 60*time.Second, 20*time.Millisecond)
	got := rec.delivered()
	require.Equal(t, want, ids(got), "delivered in commit order, once each")

	// Every field as the database holds it, once the batches are recorded.
	require.Eventually(t, func() bool {
		var n int
		return db.QueryRow("SELECT COUNT(*) FROM outbox WHERE state = 'delivered'").Scan(&n) == nil && n == len(want)
	}, 20*time.Second, 20*time.Millisecond)
	rows, err := db.Query("SELECT seq, id, topic, message_key, payload, headers, created_at, state FROM outbox ORDER BY seq")
	require.NoError(t, err)
	defer rows.Close()
	byID := map[string]store.ClaimedMessage{}
	for _, m := range got {
		byID[m.ID] = m
	}
	n := 0
	for rows.Next() {
		var (
			seq                  int64
			id, topic, key, hdrs string
			payload              []byte
			created              time.Time
			state                string
		)
		require.NoError(t, rows.Scan(&seq, &id, &topic, &key, &payload, &hdrs, &created, &state))
		n++
		m, ok := byID[id]
		require.True(t, ok, "row %s not delivered", id)
		require.Equal(t, "delivered", state, id)
		h, err := store.DecodeHeaders(hdrs)
		require.NoError(t, err)
		require.Equal(t, topic, m.Topic, id)
		require.Equal(t, key, m.Key, id)
		require.Equal(t, payload, m.Payload, id)
		require.Equal(t, h, m.Headers, id)
		require.True(t, created.Equal(m.CreatedAt), "%s: created_at %v, delivered %v", id, created, m.CreatedAt)
		require.Equal(t, time.UTC, m.CreatedAt.Location(), id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, len(want), n)

	// The values themselves, for the rows written by hand.
	require.Equal(t, first.Payload, byID[first.ID].Payload)
	require.Equal(t, first.Headers, byID[first.ID].Headers)
	require.Equal(t, "order-1", byID[first.ID].Key)
	require.Empty(t, byID[empty.ID].Payload)
	require.Equal(t, []byte{0x00, 0xff, 0x80, 0xfe}, byID[cliIDs[0]].Payload)
	require.Equal(t, map[string]string{"a": "1"}, byID[cliIDs[0]].Headers)
	require.Equal(t, "pay-7", byID[cliIDs[0]].Key)
	ex := byID["0190f3a2-7b1c-7000-8000-00000000a001"]
	require.Equal(t, "payments", ex.Topic)
	require.Equal(t, map[string]string{"event_type": "PaymentCompleted"}, ex.Headers)
	require.WithinDuration(t, time.Now(), ex.CreatedAt, time.Minute)
	require.Equal(t, big.Payload, byID[big.ID].Payload)

	// Idle now: the reader reports that it caught up with everything written.
	require.Eventually(t, func() bool {
		s, _ := rec.status()
		return s.Reading && s.CaughtUp.After(wrote) && s.LagBytes >= 0
	}, 20*time.Second, 50*time.Millisecond)
	for _, m := range rec.delivered() {
		require.NotEqual(t, rolledBack.ID, m.ID)
		require.NotEqual(t, foreign.ID, m.ID)
	}
}

func TestReadLogUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// open returns the store to read, given the test's migrated database.
		open func(t *testing.T, admin *sql.DB, dsn string) *sqlstore.Store
		want string
	}{
		{
			name: "without replication privileges",
			open: func(t *testing.T, admin *sql.DB, dsn string) *sqlstore.Store {
				u := createUser(t, admin, dsn, "SELECT, INSERT, UPDATE, DELETE ON {db}.*")
				return openStore(t, u.dsn)
			},
			want: "REPLICATION SLAVE and REPLICATION CLIENT",
		},
		{
			name: "with REPLICATION SLAVE only",
			open: func(t *testing.T, admin *sql.DB, dsn string) *sqlstore.Store {
				u := createUser(t, admin, dsn, "SELECT, INSERT, UPDATE, DELETE ON {db}.*", "REPLICATION SLAVE ON *.*")
				return openStore(t, u.dsn)
			},
			want: "REPLICATION CLIENT",
		},
		{
			name: "with REPLICATION CLIENT only",
			open: func(t *testing.T, admin *sql.DB, dsn string) *sqlstore.Store {
				u := createUser(t, admin, dsn, "SELECT, INSERT, UPDATE, DELETE ON {db}.*", "REPLICATION CLIENT ON *.*")
				return openStore(t, u.dsn)
			},
			want: "REPLICATION SLAVE",
		},
		{
			name: "database not opened with Open",
			open: func(t *testing.T, _ *sql.DB, dsn string) *sqlstore.Store {
				db, err := sql.Open("mysql", dsn)
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })
				st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
				require.NoError(t, err)
				return st
			},
			want: "mysqlstore.Open",
		},
		{
			name: "table not migrated",
			open: func(t *testing.T, _ *sql.DB, dsn string) *sqlstore.Store {
				st := openStore(t, dsn)
				st2, err := sqlstore.EngineOf(mysqlstore.New(st.DB(), mysqlstore.Config{Table: "never_migrated"}))
				require.NoError(t, err)
				return st2
			},
			want: "run Migrate",
		},
		{
			name: "position no longer in the binlog",
			open: func(t *testing.T, admin *sql.DB, dsn string) *sqlstore.Store {
				var pos string
				require.NoError(t, admin.QueryRow("SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos))
				// A GTID far ahead of the server's: as after RESET MASTER, or a restore.
				first := strings.Split(pos, ",")[0]
				f := strings.Split(first, "-")
				_, err := admin.Exec("UPDATE outbox_log_position SET gtid_set = ?", f[0]+"-"+f[1]+"-999999999999")
				require.NoError(t, err)
				return openStore(t, dsn)
			},
			want: "no longer holds",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			admin, dsn := dbtest.MySQL(t)
			newLogStore(t, admin, "")
			st := tc.open(t, admin, dsn)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := storetest.ReadLog(ctx, st, (&logRecorder{}).consumer())
			require.ErrorIs(t, err, store.ErrLogUnavailable)
			require.ErrorContains(t, err, tc.want)
			t.Logf("%v", err)
		})
	}
}

// killSessions kills the sessions of user that match where, a condition on
// information_schema.processlist, as a server restart or a network fault ends them; it waits
// for at least one to be there.
func killSessions(t *testing.T, admin *sql.DB, user, where string) {
	t.Helper()
	var found []int64
	require.Eventually(t, func() bool {
		rows, err := admin.Query("SELECT id FROM information_schema.processlist WHERE user = ? AND "+where, user)
		if err != nil {
			return false
		}
		defer rows.Close()
		found = found[:0]
		for rows.Next() {
			var id int64
			if rows.Scan(&id) == nil {
				found = append(found, id)
			}
		}
		return len(found) > 0
	}, 10*time.Second, 20*time.Millisecond, "sessions of %s where %s", user, where)
	for _, id := range found {
		// A session may end by itself meanwhile.
		if _, err := admin.Exec(fmt.Sprintf("KILL %d", id)); err != nil {
			var me *mysql.MySQLError
			require.True(t, errors.As(err, &me) && me.Number == 1094, "KILL %d: %v", id, err) // ER_NO_SUCH_THREAD
		}
	}
}

func openStore(t *testing.T, dsn string) *sqlstore.Store {
	t.Helper()
	db, err := mysqlstore.Open(dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	return st
}

// TestReadLogMapsColumns reads rows written before a column moved, which only the names in
// the binlog (binlog_row_metadata=FULL) map right, and rows written after it, which
// information_schema maps right without them. binlog_row_metadata is global: other tests'
// readers only get names meanwhile.
func TestReadLogMapsColumns(t *testing.T) {
	admin, _ := dbtest.MySQL(t)
	var saved string
	require.NoError(t, admin.QueryRow("SELECT @@GLOBAL.binlog_row_metadata").Scan(&saved))
	t.Cleanup(func() {
		_, err := admin.Exec("SET GLOBAL binlog_row_metadata = " + saved)
		require.NoError(t, err)
	})
	tests := []struct {
		metadata     string
		beforeChange bool // also write before the column moves
	}{
		{metadata: "FULL", beforeChange: true},
		{metadata: "MINIMAL"},
	}
	for _, tc := range tests {
		t.Run(tc.metadata, func(t *testing.T) {
			_, err := admin.Exec("SET GLOBAL binlog_row_metadata = " + tc.metadata)
			require.NoError(t, err)
			db, _ := dbtest.MySQL(t)
			st := newLogStore(t, db, "")
			var want []store.Message
			if tc.beforeChange {
				m := store.Message{ID: store.NewID(), Topic: "before", Key: "kb", Payload: []byte("pb"), Headers: map[string]string{"h": "b"}}
				write(t, db, st, m)
				want = append(want, m)
			}
			_, err = db.Exec("ALTER TABLE outbox MODIFY COLUMN topic VARCHAR(255) NOT NULL AFTER headers, MODIFY COLUMN id VARCHAR(64) NOT NULL AFTER created_at")
			require.NoError(t, err)
			m := store.Message{ID: store.NewID(), Topic: "after", Key: "ka", Payload: []byte("pa"), Headers: map[string]string{"h": "a"}}
			write(t, db, st, m)
			want = append(want, m)

			rec := &logRecorder{}
			startReader(t, st, rec)
			require.Eventually(t, func() bool { return len(rec.delivered()) >= len(want) }, 30*time.Second, 10*time.Millisecond)
			got := rec.delivered()
			require.Len(t, got, len(want))
			for i, w := range want {
				require.Equal(t, w.ID, got[i].ID)
				require.Equal(t, w.Topic, got[i].Topic)
				require.Equal(t, w.Key, got[i].Key)
				require.Equal(t, w.Payload, got[i].Payload)
				require.Equal(t, w.Headers, got[i].Headers)
			}
		})
	}
}

// The reader looks rows up on a session in READ COMMITTED of its own. When it stops, that
// setting does not reach the application's pool.
func TestReadLogLeavesThePoolsIsolationAlone(t *testing.T) {
	t.Parallel()
	db, _ := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	rec := &logRecorder{}
	reader := startReader(t, st, rec)
	require.Eventually(t, rec.reading, 20*time.Second, 10*time.Millisecond)
	write(t, db, st, store.Message{Topic: "orders", Payload: []byte("x")})
	require.Eventually(t, func() bool { return len(rec.delivered()) == 1 }, 20*time.Second, 10*time.Millisecond)
	var lookups int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE()").Scan(&lookups))
	require.ErrorIs(t, reader.stop(t), context.Canceled)

	// Take every connection the pool holds at once, and a few more.
	ctx := context.Background()
	var conns []*sql.Conn
	for range lookups + 2 {
		c, err := db.Conn(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		var isolation string
		require.NoError(t, c.QueryRowContext(ctx, "SELECT @@SESSION.tx_isolation").Scan(&isolation))
		require.Equal(t, "REPEATABLE-READ", isolation)
		c.Close()
	}
}
