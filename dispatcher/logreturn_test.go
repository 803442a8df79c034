package dispatcher_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
)

// The lines a dispatcher logs when the change log goes away and when it is back.
const (
	outageLine = "change log unavailable; polling"
	backLine   = "change log back"
)

// returnConfig is a config for the tests of a lost log: fast retries and sweeps, and logs
// into logs.
func returnConfig(logs *syncBuffer) dispatcher.Config {
	cfg := logConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	return cfg
}

// openMigrated opens a pool and a store of its own on shared, configured by cfg (Table and
// Logger are set), and migrates it.
func openMigrated(t *testing.T, shared sharedDB, cfg pgstore.Config) (*sql.DB, dbtest.Store) {
	t.Helper()
	cfg.Table, cfg.Logger = shared.table, quiet()
	var (
		db  *sql.DB
		st  dbtest.Store
		err error
	)
	if shared.kind == "postgres" {
		db, err = pgstore.Open(shared.dsn)
		require.NoError(t, err)
		st, err = dbtest.EngineOf(pgstore.New(db, cfg))
	} else {
		db, err = mysqlstore.Open(shared.dsn)
		require.NoError(t, err)
		st, err = dbtest.EngineOf(mysqlstore.New(db, cfg))
	}
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	require.NoError(t, st.Migrate(context.Background()))
	return db, st
}

// steadyWriters write from several goroutines at once, each with keys of its own, one message
// of each of its keys per transaction, until stopped: the keys' transactions interleave, and
// their seqs are not in commit order. Payloads are "key/index", counting up per key.
type steadyWriters struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	written atomic.Int64
	errs    chan error
}

func startWriters(db *sql.DB, st dbtest.Store, writers, keys int, pause time.Duration) *steadyWriters {
	w := &steadyWriters{stop: make(chan struct{}), errs: make(chan error, writers)}
	for i := range writers {
		w.wg.Go(func() {
			ctx := context.Background()
			for n := 0; ; n++ {
				select {
				case <-w.stop:
					return
				default:
				}
				msgs := make([]store.Message, keys)
				for k := range msgs {
					key := fmt.Sprintf("w%dk%d", i, k)
					msgs[k] = store.Message{Topic: "orders", Key: key, Payload: []byte(fmt.Sprintf("%s/%d", key, n))}
				}
				tx, err := db.BeginTx(ctx, nil)
				if err == nil {
					if err = st.Write(ctx, tx, msgs...); err == nil {
						err = tx.Commit()
					} else {
						tx.Rollback()
					}
				}
				if err != nil {
					w.errs <- err
					return
				}
				w.written.Add(int64(keys))
				time.Sleep(pause)
			}
		})
	}
	return w
}

// finish stops the writers and returns how many messages they wrote.
func (w *steadyWriters) finish(t *testing.T) int {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	close(w.errs)
	for err := range w.errs {
		require.NoError(t, err)
	}
	return int(w.written.Load())
}

// waitWritten waits until the writers wrote n messages more than now.
func (w *steadyWriters) waitWritten(t *testing.T, n int) {
	t.Helper()
	target := w.written.Load() + int64(n)
	require.Eventually(t, func() bool { return w.written.Load() >= target }, 30*time.Second, time.Millisecond)
}

// modeSampler reads a dispatcher's Mode and its status handler's mode very often, and keeps
// every change it sees.
type modeSampler struct {
	once    sync.Once
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	changes []dispatcher.Mode
	samples int
}

func sampleModes(t *testing.T, d *dispatcher.Dispatcher) *modeSampler {
	s := &modeSampler{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { s.finish() })
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			m := d.Mode()
			if i%500 == 0 { // the status handler's, which reads the store too: now and then
				st := d.Status(context.Background(), time.Minute)
				s.add(map[string]dispatcher.Mode{"log": dispatcher.ModeLog, "standby": dispatcher.ModeStandby,
					"polling": dispatcher.ModePolling, "stopped": dispatcher.ModeStopped}[st.Mode])
			}
			s.add(m)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	return s
}

func (s *modeSampler) add(m dispatcher.Mode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	if n := len(s.changes); n == 0 || s.changes[n-1] != m {
		s.changes = append(s.changes, m)
	}
}

// finish stops sampling and returns the modes seen, each change once, and how many samples.
func (s *modeSampler) finish() ([]dispatcher.Mode, int) {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changes, s.samples
}

// requireOneReturn checks that the modes seen went to polling once, then to log once, and
// never showed log while the log was lost.
func requireOneReturn(t *testing.T, modes []dispatcher.Mode, samples int) {
	t.Helper()
	t.Logf("modes seen in %d samples: %v", samples, modes)
	var kept []dispatcher.Mode
	for _, m := range modes {
		if m != dispatcher.ModeStandby { // a reader waits for the lock a moment at start
			kept = append(kept, m)
		}
	}
	polling := slicesIndex(kept, dispatcher.ModePolling)
	require.GreaterOrEqual(t, polling, 0, "the dispatcher polled while the log was lost: %v", modes)
	for _, m := range kept[polling+1:] {
		require.Equal(t, dispatcher.ModeLog, m, "after polling, only the return to the log: %v", modes)
	}
	require.Equal(t, dispatcher.ModeLog, kept[len(kept)-1], "back on the log: %v", modes)
}

func slicesIndex(ms []dispatcher.Mode, m dispatcher.Mode) int {
	for i, x := range ms {
		if x == m {
			return i
		}
	}
	return -1
}

// requireLoggedOnce checks that the outage was logged once as a warning and its end once,
// and returns how many messages the end line says went out by polling.
func requireLoggedOnce(t *testing.T, logs *syncBuffer) int {
	t.Helper()
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, outageLine), "one warning per outage:\n%s", out)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), backLine) }, 10*time.Second, 10*time.Millisecond)
	out = logs.String()
	require.Equal(t, 1, strings.Count(out, backLine), "one line when the log is back:\n%s", out)
	m := regexp.MustCompile(`msg="` + backLine + `[^"]*".*? unavailable_for=(\S+) published_by_polling=(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "the line says how long and how many:\n%s", out)
	polled, err := strconv.Atoi(m[2])
	require.NoError(t, err)
	t.Logf("log back after %s, %d messages published by polling meanwhile", m[1], polled)
	return polled
}

// requireAllOnceInOrder waits until the n messages written went out, and checks that each
// key's first deliveries followed its write order, and that the outbox holds all n,
// delivered.
func requireAllOnceInOrder(t *testing.T, pub *outboxtest.Publisher, st dbtest.Store, n int) {
	t.Helper()
	var published []string
	require.Eventually(t, func() bool {
		published = published[:0]
		seen := map[string]bool{}
		for _, m := range pub.Messages("orders") {
			published = append(published, string(m.Payload))
			seen[string(m.Payload)] = true
		}
		return len(seen) >= n
	}, 3*time.Minute, 20*time.Millisecond, "all %d messages published", n)
	requireFirstDeliveriesInOrder(t, published, n)
	waitNonePending(t, st, 30*time.Second)
	requireDelivered(t, st, n, false)
	t.Logf("%d messages, %d publishes: 0 lost, 0 inversions", n, len(published))
}

// MariaDB: the binlog files that hold the stored position are flushed and purged while the
// dispatcher is stopped, and writes go on throughout. The restarted dispatcher polls (the
// reader says the position is lost, and never that it reads), and at its next try reads the
// binlog again from the server's current position with no operator; the sweep delivers what
// was written in between first. Nothing is lost, no key goes out of order, and the outage
// is logged once when it begins and once when it ends.
func TestReturnToTheLogAfterAPurge(t *testing.T) {
	shared := sharedMySQL(t)
	db, st := openMigrated(t, shared, pgstore.Config{})
	pub := outboxtest.NewPublisher()
	writers := startWriters(db, st, 4, 5, 3*time.Millisecond)
	var stopWriters sync.Once
	t.Cleanup(func() { stopWriters.Do(func() { writers.finish(t) }) })

	first, err := dispatcher.New(st, pub, logConfig())
	require.NoError(t, err)
	require.NoError(t, first.Start(context.Background()))
	t.Cleanup(func() { first.Stop(context.Background()) })
	waitMode(t, first, dispatcher.ModeLog)
	writers.waitWritten(t, 500)
	require.NoError(t, first.Stop(context.Background()))
	writers.waitWritten(t, 500) // the stored position falls behind

	var schema string
	require.NoError(t, db.QueryRow("SELECT DATABASE()").Scan(&schema))
	purgeBinlogs(t, db, schema)

	var logs syncBuffer
	second, err := dispatcher.New(st, pub, returnConfig(&logs))
	require.NoError(t, err)
	require.NoError(t, second.Start(context.Background()))
	sampler := sampleModes(t, second)
	defer second.Stop(context.Background())
	waitMode(t, second, dispatcher.ModeLog)
	writers.waitWritten(t, 500) // and on, across the return
	var n int
	stopWriters.Do(func() { n = writers.finish(t) })
	time.Sleep(200 * time.Millisecond)
	modes, samples := sampler.finish()
	requireOneReturn(t, modes, samples)
	require.Positive(t, requireLoggedOnce(t, &logs))
	require.Contains(t, logs.String(), "no longer holds the reader's position")
	requireAllOnceInOrder(t, pub, st, n)
}

// purgeBinlogs flushes the binary logs and purges every file before the new one, once no
// other outbox on the shared server that stored its position lately needs them (their
// readers store a position in the new file within a second or two). The reader of the outbox
// in database schema is stopped, and its position is in a purged file afterwards.
func purgeBinlogs(t *testing.T, db *sql.DB, schema string) {
	t.Helper()
	var ours string
	require.NoError(t, db.QueryRow("SELECT file FROM outbox_log_position").Scan(&ours))
	_, err := db.Exec("FLUSH BINARY LOGS")
	require.NoError(t, err)
	newest := currentBinlog(t, db)
	require.NotEqual(t, ours, newest)
	var waiting []string
	ok := assertEventually(30*time.Second, func() bool {
		waiting = otherPositionsBefore(t, db, schema, newest)
		return len(waiting) == 0
	})
	if !ok {
		t.Skipf("other outboxes on the shared server still need binlog files before %s (%v): not purging them", newest, waiting)
	}
	// The server keeps a file that a binlog dump still reads: the stopped reader's, until the
	// server notices that its connection is gone.
	purged := assertEventually(30*time.Second, func() bool {
		_, err := db.Exec("PURGE BINARY LOGS TO '" + newest + "'")
		require.NoError(t, err)
		return !slices.Contains(binlogFiles(t, db), ours)
	})
	require.True(t, purged, "the file of the stored position, %s, is purged", ours)
	t.Logf("purged the binary logs before %s; the stored position was in %s", newest, ours)
}

// binlogFiles lists the server's binary log files.
func binlogFiles(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.Query("SHOW BINARY LOGS")
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	var files []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		dest := make([]any, len(cols))
		for i := range vals {
			dest[i] = &vals[i]
		}
		require.NoError(t, rows.Scan(dest...))
		files = append(files, vals[0].String)
	}
	require.NoError(t, rows.Err())
	return files
}

func currentBinlog(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query("SHOW MASTER STATUS")
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	require.True(t, rows.Next())
	vals := make([]sql.NullString, len(cols))
	dest := make([]any, len(cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	require.NoError(t, rows.Scan(dest...))
	return vals[0].String
}

// otherPositionsBefore lists the outboxes, other than the one in schema, whose position was
// stored in the last two minutes in a binlog file before file.
func otherPositionsBefore(t *testing.T, db *sql.DB, schema, file string) []string {
	t.Helper()
	rows, err := db.Query(`SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
		WHERE TABLE_NAME LIKE '%\_log\_position' AND TABLE_SCHEMA <> ?`, schema)
	require.NoError(t, err)
	var tables []string
	for rows.Next() {
		var s, n string
		require.NoError(t, rows.Scan(&s, &n))
		tables = append(tables, "`"+s+"`.`"+n+"`")
	}
	rows.Close()
	var before []string
	for _, tbl := range tables {
		var f string
		// A database dropped meanwhile, or a row not stored yet: nothing to keep.
		err := db.QueryRow("SELECT file FROM " + tbl + " WHERE id = 1 AND updated_at > UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE").Scan(&f)
		if err == nil && f != "" && f < file {
			before = append(before, tbl+" in "+f)
		}
	}
	return before
}

// assertEventually reports whether cond held within d, checking every 100 ms.
func assertEventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Postgres: the slot is dropped under a running dispatcher while writes go on. It polls,
// creates a new slot at its next try with no operator (no Migrate), and reads the log again;
// the sweep delivers what was written while no slot existed first.
func TestReturnToTheLogAfterTheSlotIsDropped(t *testing.T) {
	shared := sharedPostgres(t)
	db, st := openMigrated(t, shared, pgstore.Config{})
	pub := outboxtest.NewPublisher()
	var logs syncBuffer
	d := startDispatcher(t, st, pub, returnConfig(&logs))
	waitMode(t, d, dispatcher.ModeLog)
	writers := startWriters(db, st, 4, 5, 3*time.Millisecond)
	var stopWriters sync.Once
	t.Cleanup(func() { stopWriters.Do(func() { writers.finish(t) }) })
	writers.waitWritten(t, 500)

	sampler := sampleModes(t, d)
	slot := slotOf(t, st.DB(), st.QualifiedName())
	require.Eventually(t, func() bool {
		db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot)
		_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	waitMode(t, d, dispatcher.ModePolling)
	writers.waitWritten(t, 300)
	waitMode(t, d, dispatcher.ModeLog)
	writers.waitWritten(t, 500)
	var n int
	stopWriters.Do(func() { n = writers.finish(t) })
	time.Sleep(200 * time.Millisecond)
	modes, samples := sampler.finish()
	requireOneReturn(t, modes, samples)
	requireLoggedOnce(t, &logs)
	requireAllOnceInOrder(t, pub, st, n)
	var exists bool
	require.NoError(t, db.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)", slot).Scan(&exists))
	require.True(t, exists, "the dispatcher reads from a new slot")
}

// Postgres: the slot is invalidated (max_slot_wal_keep_size) while the dispatcher reads it
// and writes go on; the dispatcher polls, drops the invalidated slot and creates a new one
// with no operator, and reads the log again.
//
// Invalidating a slot takes a server-wide setting: the test lowers max_slot_wal_keep_size for
// the moment of one checkpoint, and restores it. So that no other slot on the shared server
// is invalidated with it, its reader is held back (the publisher blocks) while WAL is
// switched, and the checkpoint is made only once this slot alone is due for it ("unreserved");
// otherwise the test is skipped.
func TestReturnToTheLogAfterTheSlotIsInvalidated(t *testing.T) {
	shared := sharedPostgres(t)
	db, st := openMigrated(t, shared, pgstore.Config{})
	var (
		held    atomic.Bool
		holding atomic.Int64 // publishes blocked now
	)
	pub := outboxtest.NewPublisher()
	pub.Fail = func(string, *message.Message) error {
		if held.Load() {
			holding.Add(1)
			for held.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			holding.Add(-1)
		}
		return nil
	}
	var logs syncBuffer
	d := startDispatcher(t, st, pub, returnConfig(&logs))
	t.Cleanup(func() { held.Store(false) }) // before the dispatcher stops
	waitMode(t, d, dispatcher.ModeLog)
	writers := startWriters(db, st, 4, 5, 3*time.Millisecond)
	var stopWriters sync.Once
	t.Cleanup(func() { stopWriters.Do(func() { writers.finish(t) }) })
	writers.waitWritten(t, 500)

	sampler := sampleModes(t, d)
	held.Store(true) // the reader stops confirming
	require.Eventually(t, func() bool { return holding.Load() > 0 }, 10*time.Second, time.Millisecond)
	slot := slotOf(t, st.DB(), st.QualifiedName())
	invalidateSlot(t, db, slot)
	held.Store(false)

	waitMode(t, d, dispatcher.ModePolling)
	writers.waitWritten(t, 300)
	waitMode(t, d, dispatcher.ModeLog)
	writers.waitWritten(t, 500)
	var n int
	stopWriters.Do(func() { n = writers.finish(t) })
	time.Sleep(200 * time.Millisecond)
	modes, samples := sampler.finish()
	requireOneReturn(t, modes, samples)
	requireLoggedOnce(t, &logs)
	require.Contains(t, logs.String(), "lost WAL it needed")
	requireAllOnceInOrder(t, pub, st, n)
	var status sql.NullString
	require.NoError(t, db.QueryRow("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&status))
	require.NotEqual(t, "lost", status.String, "the dispatcher reads from a new slot")
}

// invalidateSlot has the server invalidate slot, whose reader is held back: it switches WAL
// files until the slot keeps more than max_slot_wal_keep_size would allow, lowers that setting
// for one checkpoint, and restores it.
func invalidateSlot(t *testing.T, db *sql.DB, slot string) {
	t.Helper()
	const keep = 32 << 20 // bytes; two WAL files of the default size
	var saved string
	require.NoError(t, db.QueryRow("SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'").Scan(&saved))
	require.Equal(t, "-1", saved, "max_slot_wal_keep_size is set on the test server; this test would change it")
	restore := func() {
		_, err := db.Exec("ALTER SYSTEM RESET max_slot_wal_keep_size")
		require.NoError(t, err)
		_, err = db.Exec("SELECT pg_reload_conf()")
		require.NoError(t, err)
	}
	t.Cleanup(restore)
	lag := func(name string) int64 {
		var b sql.NullInt64
		require.NoError(t, db.QueryRow("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&b))
		return b.Int64
	}
	// Past the setting by a few files: the writers keep each switch from being empty.
	for lag(slot) < 3*keep {
		_, err := db.Exec("SELECT pg_switch_wal()")
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
	}
	// A checkpoint logs the running transactions, which lets the other slots' readers move
	// their restart position up when they confirm (about every second); this one's is held.
	_, err := db.Exec("CHECKPOINT")
	require.NoError(t, err)
	var others []string
	behind := func() bool {
		others = others[:0]
		// Slots of test schemas that are gone belong to no running test (left behind by
		// one that was killed): no one reads them again.
		rows, err := db.Query(`SELECT slot_name FROM pg_replication_slots WHERE slot_name <> $1 AND wal_status <> 'lost'
			AND pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) > $2
			AND NOT (database = current_database() AND slot_name LIKE 'outbox\_test\_%'
				AND NOT EXISTS (SELECT 1 FROM pg_namespace WHERE left(slot_name, length(nspname) + 1) = nspname || '_'))`,
			slot, keep/2)
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var s string
			require.NoError(t, rows.Scan(&s))
			others = append(others, s)
		}
		return len(others) == 0
	}
	if !assertEventually(30*time.Second, behind) {
		t.Skipf("other slots on the shared server keep WAL past %d bytes (%v): invalidating this one would invalidate them", keep/2, others)
	}
	_, err = db.Exec(fmt.Sprintf("ALTER SYSTEM SET max_slot_wal_keep_size = '%dMB'", keep>>20))
	require.NoError(t, err)
	_, err = db.Exec("SELECT pg_reload_conf()")
	require.NoError(t, err)
	lost := assertEventually(15*time.Second, func() bool {
		if !behind() {
			return false // a reader of another slot fell behind meanwhile: wait for it
		}
		// The checkpointer takes the setting at its next loop: a checkpoint requested too
		// early invalidates nothing, and the next one does.
		_, err := db.Exec("CHECKPOINT")
		require.NoError(t, err)
		var status sql.NullString
		require.NoError(t, db.QueryRow("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&status))
		return status.String == "lost"
	})
	restore()
	require.True(t, lost, "the slot was invalidated; other slots behind: %v", others)
	t.Logf("slot %s invalidated", slot)
}

// Mode, the status handler and the metrics never say log while the log cannot be read, however
// often the reader retries (every 20 ms here, the server refusing each time), and the outage
// is logged once: MariaDB with a stored position the binlog does not hold (the server
// refuses it a moment after the stream starts), and Postgres without its slot. Both are left
// to the operator (ManualLogRecovery); once the operator mends it, the log is back, logged
// once, with the messages that polling published meanwhile.
func TestModeNeverSaysLogWhileTheLogIsUnavailable(t *testing.T) {
	for _, newDB := range []func(*testing.T) sharedDB{sharedMySQL, sharedPostgres} {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			db, st := openMigrated(t, shared, pgstore.Config{ManualLogRecovery: true})
			var mend func()
			if shared.kind == "postgres" {
				slot := slotOf(t, st.DB(), st.QualifiedName())
				_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
				require.NoError(t, err)
				mend = func() { require.NoError(t, st.Migrate(context.Background())) }
			} else {
				var pos string
				require.NoError(t, db.QueryRow("SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos))
				f := strings.Split(strings.Split(pos, ",")[0], "-")
				_, err := db.Exec("UPDATE outbox_log_position SET gtid_set = ?", f[0]+"-"+f[1]+"-999999999999")
				require.NoError(t, err)
				mend = func() {
					_, err := db.Exec("DELETE FROM outbox_log_position")
					require.NoError(t, err)
				}
			}
			pub := outboxtest.NewPublisher()
			var logs syncBuffer
			cfg := returnConfig(&logs)
			cfg.LogRetry = 20 * time.Millisecond
			d := startDispatcher(t, st, pub, cfg)
			sampler := sampleModes(t, d)
			waitMode(t, d, dispatcher.ModePolling)
			writeN(t, db, st, "a", 40)
			waitPublished(t, pub, "log", 40)
			time.Sleep(2 * time.Second) // about 100 tries
			modes, samples := sampler.finish()
			t.Logf("modes seen in %d samples over 2 s of retries: %v", samples, modes)
			require.NotContains(t, modes, dispatcher.ModeLog, "log while the log cannot be read")
			require.Equal(t, 1, strings.Count(logs.String(), outageLine), "one warning per outage:\n%s", logs.String())
			require.NotContains(t, logs.String(), backLine)

			mend()
			waitMode(t, d, dispatcher.ModeLog)
			require.Equal(t, 40, requireLoggedOnce(t, &logs), "the messages published by polling")
			writeN(t, db, st, "b", 40)
			waitPublished(t, pub, "log", 80)
			requireKeyOrder(t, pub.Messages("log"))
		})
	}
}
