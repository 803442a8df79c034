package dispatcher_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
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
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

// logDatabases are the databases whose stores read a change log.
var logDatabases = []func(*testing.T) sharedDB{sharedPostgres, logOnlyPostgres, sharedMySQL}

// claimCounter counts the messages a store hands out through claims.
type claimCounter struct {
	dbtest.Store
	claimed atomic.Int64
	calls   atomic.Int64
}

func (c *claimCounter) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	c.calls.Add(1)
	res, err := c.Store.Claim(ctx, p)
	if err == nil {
		c.claimed.Add(int64(len(res.Messages)))
	}
	return res, err
}

// logConfig is a config for log tests: fast retries and sweeps.
func logConfig() dispatcher.Config {
	return fast(dispatcher.Config{SweepAfter: 200 * time.Millisecond, LogRetry: 300 * time.Millisecond})
}

func startDispatcher(t *testing.T, st store.Outbox, pub message.Publisher, cfg dispatcher.Config) *dispatcher.Dispatcher {
	t.Helper()
	d, err := dispatcher.New(st, pub, cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, d.Stop(ctx))
	})
	return d
}

func waitMode(t *testing.T, d *dispatcher.Dispatcher, want dispatcher.Mode) {
	t.Helper()
	require.Eventually(t, func() bool { return d.Mode() == want }, 15*time.Second, 10*time.Millisecond,
		"dispatcher mode is %s, want %s", d.Mode(), want)
}

func writeN(t *testing.T, db *sql.DB, st dbtest.Store, prefix string, n int) {
	t.Helper()
	tx, err := db.Begin()
	require.NoError(t, err)
	msgs := make([]store.Message, n)
	for i := range msgs {
		msgs[i] = store.Message{Topic: "log", Key: fmt.Sprintf("k%d", i%5), Payload: []byte(fmt.Sprintf("%s-%d", prefix, i))}
	}
	require.NoError(t, st.Write(context.Background(), tx, msgs...))
	require.NoError(t, tx.Commit())
}

// waitNonePending waits, up to within, until no message is pending: a publisher acknowledges
// a message a moment before the dispatcher marks it delivered.
func waitNonePending(t *testing.T, st store.Outbox, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		res, err := store.EngineOf(st).List(context.Background(), &store.ListParams{State: store.Pending, Limit: 1})
		return err == nil && len(res.Messages) == 0
	}, within, 10*time.Millisecond, "messages still pending")
}

// distinctPublished counts distinct message ids the publisher acknowledged, and all of them.
func distinctPublished(pub *outboxtest.Publisher, topic string) (distinct, all int) {
	seen := map[string]bool{}
	for _, m := range pub.Messages(topic) {
		seen[m.UUID] = true
	}
	return len(seen), len(pub.Messages(topic))
}

func waitPublished(t *testing.T, pub *outboxtest.Publisher, topic string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { d, _ := distinctPublished(pub, topic); return d >= n }, 30*time.Second, 10*time.Millisecond,
		"published %d distinct messages, want %d", func() int { d, _ := distinctPublished(pub, topic); return d }(), n)
}

// With default settings on a server whose log is available, the dispatcher reads the log:
// the server shows the reader (an active slot, a binlog dump), and messages are published
// without a single claim.
func TestDispatcherReadsTheChangeLog(t *testing.T) {
	for _, newDB := range logDatabases {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			_, db, st := shared.prepare(t)
			pub := outboxtest.NewPublisher()
			counter := &claimCounter{Store: st}
			d := startDispatcher(t, counter, pub, dispatcher.Config{Logger: quiet()})
			waitMode(t, d, dispatcher.ModeLog)
			var readers int
			if shared.kind == "postgres" {
				slot := slotOf(t, st.DB(), st.QualifiedName())
				require.NoError(t, db.QueryRow("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active", slot).Scan(&readers))
			} else {
				require.NoError(t, db.QueryRow("SELECT count(*) FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%'").Scan(&readers))
			}
			require.Positive(t, readers, "the server shows the log reader")

			writeN(t, db, st, "a", 200)
			waitPublished(t, pub, "log", 200)
			_, all := distinctPublished(pub, "log")
			require.Equal(t, 200, all, "no duplicates")
			requireKeyOrder(t, pub.Messages("log"))
			require.Zero(t, counter.claimed.Load(), "no message was claimed: the log carried them all")
		})
	}
}

// Beside a log reader with nothing to sweep, the sweep claims every quarter of SweepAfter (at
// most every 15 s), not at the polling pace; while a failed message waits for its retry it
// comes back at the polling pace and delivers it.
func TestSweepKeepsItsPace(t *testing.T) {
	for _, newDB := range logDatabases {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			_, db, st := shared.prepare(t)
			pub := outboxtest.NewPublisher()
			var failOnce atomic.Bool
			failOnce.Store(true)
			pub.Fail = func(_ string, m *message.Message) error {
				if string(m.Payload) == "b-0" && failOnce.CompareAndSwap(true, false) {
					return errors.New("refused once")
				}
				return nil
			}
			counter := &claimCounter{Store: st}
			startDispatcher(t, counter, pub, fast(dispatcher.Config{
				PollInterval: 10 * time.Millisecond, SweepAfter: time.Minute, RetryInitial: 300 * time.Millisecond, RetryMax: 300 * time.Millisecond,
			}))
			writeN(t, db, st, "a", 10)
			waitPublished(t, pub, "log", 10)
			before := counter.calls.Load()
			time.Sleep(2500 * time.Millisecond)
			idle := counter.calls.Load() - before
			t.Logf("%d sweep claims in 2.5 s idle", idle)
			require.LessOrEqual(t, idle, int64(1), "one sweep in 15 s, not one per poll interval")

			// b-0 fails once, and its key waits: the sweep delivers them after its retry.
			writeN(t, db, st, "b", 10)
			require.Eventually(t, func() bool { d, _ := distinctPublished(pub, "log"); return d == 20 }, 5*time.Second, 10*time.Millisecond,
				"the failed message is delivered when its retry is due, not at the next idle sweep")
			requireKeyOrder(t, pub.Messages("log"))
		})
	}
}

// requireKeyOrder checks that each key's messages were first published in write order. The
// payload is "<transaction>-<index>", transactions written in increasing order.
func requireKeyOrder(t *testing.T, msgs []*message.Message) {
	t.Helper()
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[m.UUID] {
			continue
		}
		seen[m.UUID] = true
		var (
			txn string
			i   int
		)
		_, err := fmt.Sscanf(string(m.Payload), "%1s-%d", &txn, &i)
		require.NoError(t, err)
		rank := int(txn[0])*100000 + i
		k := m.Metadata.Get(publisher.MetadataKey)
		if prev, ok := last[k]; ok {
			require.Greater(t, rank, prev, "key %s out of order at %s", k, m.Payload)
		}
		last[k] = rank
	}
}

// When the slot is dropped under a running dispatcher, it polls and loses nothing; once
// Migrate creates the slot again, it returns to the log. Messages written while no slot
// existed are not in the log: the sweep delivers them.
func TestDispatcherFallsBackToPollingAndReturnsToTheLog(t *testing.T) {
	_, db, st := sharedPostgres(t).prepare(t)
	pub := outboxtest.NewPublisher()
	d := startDispatcher(t, st, pub, logConfig())
	waitMode(t, d, dispatcher.ModeLog)
	writeN(t, db, st, "a", 50)
	waitPublished(t, pub, "log", 50)

	slot := slotOf(t, st.DB(), st.QualifiedName())
	require.Eventually(t, func() bool {
		db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot)
		_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	waitMode(t, d, dispatcher.ModePolling)
	writeN(t, db, st, "b", 50)
	waitPublished(t, pub, "log", 100)

	require.NoError(t, st.Migrate(context.Background()))
	waitMode(t, d, dispatcher.ModeLog)
	writeN(t, db, st, "c", 50)
	waitPublished(t, pub, "log", 150)
	requireKeyOrder(t, pub.Messages("log"))
	waitNonePending(t, st, 10*time.Second)
	requireDelivered(t, st, 150, false)
}

// Messages written before the slot existed are delivered by the sweep.
func TestSweepDeliversWhatTheLogMissed(t *testing.T) {
	_, db, st := sharedPostgres(t).prepare(t)
	slot := slotOf(t, st.DB(), st.QualifiedName())
	_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
	require.NoError(t, err)
	writeN(t, db, st, "a", 30)
	require.NoError(t, st.Migrate(context.Background()))

	pub := outboxtest.NewPublisher()
	d := startDispatcher(t, st, pub, logConfig())
	waitMode(t, d, dispatcher.ModeLog)
	writeN(t, db, st, "b", 30)
	waitPublished(t, pub, "log", 60)
	_, all := distinctPublished(pub, "log")
	require.Equal(t, 60, all, "no duplicates")
}

// Two dispatchers share an outbox: one reads the log, the other waits. When the reader's
// dispatcher stops, the standby takes over and nothing is lost.
func TestStandbyDispatcherTakesOverTheLog(t *testing.T) {
	for _, newDB := range logDatabases {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) { standbyTakesOver(t, shared) })
	}
}

// watchedLog is a store that tells how a dispatcher came to read its log: how often OpenLog
// was called, what the reader reported, and which messages claims handed out.
type watchedLog struct {
	dbtest.Store
	reads        atomic.Int64
	standby      atomic.Int64 // reports of waiting for another reader
	readingSince atomic.Int64 // unix nanoseconds of the first report of reading; 0: none
	claims       atomic.Int64
	claimed      sync.Map // payload → true, of the messages claims handed out
}

func (w *watchedLog) OpenLog(ctx context.Context, o store.LogOptions) (store.LogStream, error) {
	w.reads.Add(1)
	status := o.Status
	o.Status = func(s store.LogStatus) {
		if s.Reading {
			w.readingSince.CompareAndSwap(0, time.Now().UnixNano())
		} else {
			w.standby.Add(1)
		}
		status(s)
	}
	return w.Store.OpenLog(ctx, o)
}

func (w *watchedLog) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	w.claims.Add(1)
	res, err := w.Store.Claim(ctx, p)
	if err == nil {
		for _, m := range res.Messages {
			w.claimed.Store(string(m.Payload), true)
		}
	}
	return res, err
}

func standbyTakesOver(t *testing.T, shared sharedDB) {
	_, db, st := shared.prepare(t)
	db2, st2 := shared.open(t, shared.dsn, shared.table)
	t.Cleanup(func() { db2.Close() })
	pub := outboxtest.NewPublisher()
	first, err := dispatcher.New(st, pub, logConfig())
	require.NoError(t, err)
	require.NoError(t, first.Start(context.Background()))
	waitMode(t, first, dispatcher.ModeLog)
	standby := &watchedLog{Store: st2}
	second := startDispatcher(t, standby, pub, logConfig())
	// A dispatcher that reads a log is a standby from its start: wait for its reader to find
	// the lock taken.
	require.Eventually(t, func() bool { return standby.standby.Load() > 0 }, 15*time.Second, 10*time.Millisecond,
		"the second dispatcher's reader never reported that it waits")

	writeN(t, db, st, "a", 100)
	waitPublished(t, pub, "log", 100)
	require.Zero(t, standby.readingSince.Load(), "the standby read while the first did")
	require.Zero(t, standby.claims.Load(), "the standby claimed while the first read")
	// The first stops abruptly, as a killed process would, while messages are written.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stopped := time.Now()
	first.Stop(ctx)
	writeN(t, db, st, "b", 100)
	waitMode(t, second, dispatcher.ModeLog)
	waitPublished(t, pub, "log", 200)
	requireKeyOrder(t, pub.Messages("log"))
	t.Logf("the standby reads %v after the first stopped", time.Unix(0, standby.readingSince.Load()).Sub(stopped).Round(time.Millisecond))

	// It took over by the lock the first gave up: the reader that waited went on to read. A
	// reader that failed and was retried, or a fall back to polling (which only a failed
	// OpenLog causes), would deliver all the same, late and by another path.
	require.EqualValues(t, 1, standby.reads.Load(), "the standby's log reader failed and was called again")
	for i := range 100 {
		_, ok := standby.claimed.Load(fmt.Sprintf("b-%d", i))
		require.False(t, ok, "b-%d was claimed: the log did not carry it", i)
	}
}

// A failed publish in log mode is retried by polling, and the later messages of its key wait
// behind it: each key stays in order, and nothing is lost.
func TestLogFailuresAreRetriedInKeyOrder(t *testing.T) {
	for _, newDB := range logDatabases {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) { failuresInKeyOrder(t, shared) })
	}
}

func failuresInKeyOrder(t *testing.T, shared sharedDB) {
	_, db, st := shared.prepare(t)
	pub := outboxtest.NewPublisher()
	var failures atomic.Int64
	pub.Fail = func(topic string, msg *message.Message) error {
		if msg.Metadata.Get(publisher.MetadataKey) == "k1" && failures.Add(1) <= 3 {
			return errors.New("broker hiccup")
		}
		return nil
	}
	d := startDispatcher(t, st, pub, logConfig())
	waitMode(t, d, dispatcher.ModeLog)
	for i := range 5 {
		writeN(t, db, st, fmt.Sprint(i), 20)
	}
	waitPublished(t, pub, "log", 100)
	requireKeyOrder(t, pub.Messages("log"))
	require.GreaterOrEqual(t, failures.Load(), int64(3))
	waitNonePending(t, st, 10*time.Second)
	requireDelivered(t, st, 100, shared.logOnly)
}

// requireDelivered checks that every message in the outbox is marked delivered, none
// parked, and that the table holds all n messages written; a log-only outbox holds only
// those that failed once.
func requireDelivered(t *testing.T, st store.Outbox, n int, logOnly bool) {
	t.Helper()
	all, err := store.EngineOf(st).List(context.Background(), &store.ListParams{Limit: n + 1})
	require.NoError(t, err)
	if !logOnly {
		require.Len(t, all.Messages, n, "messages in the outbox")
	}
	require.NotEmpty(t, all.Messages)
	for _, m := range all.Messages {
		require.Equal(t, store.Delivered, m.State, "message %s (%s)", m.ID, m.Payload)
	}
}

// silentLog is a store whose change log reader reports only when told to: until then a
// dispatcher must not claim, as its claims would race the instance that reads the log.
type silentLog struct {
	*claimCounter
	entered     chan struct{} // closed once OpenLog runs
	enteredOnce sync.Once
	report      chan struct{} // closed: the reader reports that it reads, caught up
}

func newSilentLog(st dbtest.Store) *silentLog {
	return &silentLog{claimCounter: &claimCounter{Store: st}, entered: make(chan struct{}), report: make(chan struct{})}
}

func (l *silentLog) Capabilities() store.Capabilities {
	c := l.Store.Capabilities()
	c.ChangeLog = true
	return c
}

func (l *silentLog) OpenLog(ctx context.Context, o store.LogOptions) (store.LogStream, error) {
	l.enteredOnce.Do(func() { close(l.entered) })
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.report:
	}
	o.Status(store.LogStatus{Reading: true, CaughtUp: time.Now()})
	return quietLog{}, nil
}

// quietLog is an open change log that carries nothing.
type quietLog struct{}

func (quietLog) Next(ctx context.Context) (*store.LogBatch, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (quietLog) Filter(context.Context, *store.LogBatch) error   { return nil }
func (quietLog) Record(context.Context, []*store.LogBatch) error { return nil }
func (quietLog) Close() error                                    { return nil }

// goroutineID is the calling goroutine's number, as stack traces show it.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return id
}

// waitingWorkers counts the dispatcher workers started by goroutine starter that wait in their
// loop, which they reach only after their first look at whether to claim. A worker that
// decided not to claim shows nothing else; the starter keeps other tests' dispatchers apart.
func waitingWorkers(starter string) int {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, frames, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") &&
			strings.HasPrefix(frames, "github.com/outboxgo/outbox/dispatcher.(*Dispatcher).loop(") &&
			strings.Contains(g+"\n", " in goroutine "+starter+"\n") {
			n++
		}
	}
	return n
}

// Until its log reader reports, a dispatcher claims nothing, from its very first moment: a
// claim at start would race the instance that reads the log, and publish a batch twice.
// Each round waits until the reader runs and every worker has passed its first chance to
// claim, then has the reader report: claims follow, so the counter sees the dispatcher's
// claims and its zero before meant something.
func TestNoClaimsBeforeTheLogReaderReports(t *testing.T) {
	_, db, st := sharedSQLite(t).prepare(t)
	writeN(t, db, st, "a", 10)
	const workers = 64    // many workers, many chances for one to claim at start
	self := goroutineID() // Start runs here: the workers' starter
	for round := range 20 {
		silent := newSilentLog(st)
		d, err := dispatcher.New(silent, outboxtest.NewPublisher(), fast(dispatcher.Config{Workers: workers}))
		require.NoError(t, err)
		require.NoError(t, d.Start(context.Background()))
		t.Cleanup(func() { d.Stop(context.Background()) }) // after a failed round; Stop again is a no-op
		select {
		case <-silent.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the log reader did not start")
		}
		require.Eventually(t, func() bool { return waitingWorkers(self) == workers }, 10*time.Second, time.Millisecond,
			"round %d: %d of %d workers past their first look", round, waitingWorkers(self), workers)
		require.Zero(t, silent.calls.Load(), "round %d: a dispatcher whose log reader has not reported claimed", round)

		close(silent.report)
		require.Eventually(t, func() bool { return silent.calls.Load() > 0 }, 10*time.Second, time.Millisecond,
			"round %d: no claim after the log reader reported", round)
		require.NoError(t, d.Stop(context.Background()))
	}
}

// A message parked beside a log reader and requeued by an operator goes out within seconds
// with default settings, not after the sweep's SweepAfter: requeueing hands it over to
// polling, and the sweep claims handed-over messages every two seconds.
func TestRequeuedMessageGoesOutSoonBesideTheLog(t *testing.T) {
	for _, newDB := range []func(*testing.T) sharedDB{sharedPostgres, sharedMySQL} {
		t.Run(newDB(t).name, func(t *testing.T) {
			_, db, st := newDB(t).prepare(t)
			pub := outboxtest.NewPublisher()
			var refuse atomic.Bool
			refuse.Store(true)
			pub.Fail = func(_ string, m *message.Message) error {
				if refuse.Load() && string(m.Payload) == "k/0" {
					return publisher.Permanent(errors.New("refused"))
				}
				return nil
			}
			d := startDispatcher(t, st, pub, dispatcher.Config{Logger: quiet()})
			require.Eventually(t, func() bool { return d.Mode() == dispatcher.ModeLog }, 30*time.Second, 10*time.Millisecond)
			ctx := context.Background()
			require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/0")}))
			require.Eventually(t, func() bool { return d.Stats().Parked == 1 }, 30*time.Second, 10*time.Millisecond)

			refuse.Store(false)
			n, err := st.Requeue(ctx, &store.RequeueParams{Key: "k"})
			require.NoError(t, err)
			require.Equal(t, int64(1), n)
			requeued := time.Now()
			require.Eventually(t, func() bool { return len(pub.Messages("orders")) == 1 }, 15*time.Second, 10*time.Millisecond,
				"the requeued message is published within seconds")
			t.Logf("published %v after the requeue", time.Since(requeued).Round(time.Millisecond))
		})
	}
}

// When the log comes back while messages written during polling are still pending, those
// messages are not in the log: the reader must not publish a newer message of their key
// before them. With default settings (a one-minute SweepAfter), a slow broker keeps a
// backlog pending across the switch, and new messages of the same keys follow it.
func TestReturnToTheLogWithMessagesPendingKeepsKeyOrder(t *testing.T) {
	_, db, st := sharedPostgres(t).prepare(t)
	pub := outboxtest.NewPublisher()
	var slow atomic.Bool
	pub.Fail = func(string, *message.Message) error {
		if slow.Load() {
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}
	d := startDispatcher(t, st, pub, dispatcher.Config{Logger: quiet(), LogRetry: 300 * time.Millisecond})
	waitMode(t, d, dispatcher.ModeLog)

	slot := slotOf(t, st.DB(), st.QualifiedName())
	require.Eventually(t, func() bool {
		db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot)
		_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	waitMode(t, d, dispatcher.ModePolling)

	const keys, before, after = 20, 30, 10
	write := func(from, to int) {
		for i := from; i < to; i++ {
			msgs := make([]store.Message, keys)
			for k := range msgs {
				msgs[k] = store.Message{Topic: "log", Key: fmt.Sprintf("k%02d", k), Payload: []byte(fmt.Sprintf("k%02d/%d", k, i))}
			}
			require.NoError(t, st.Write(context.Background(), db, msgs...))
		}
	}
	slow.Store(true)
	write(0, before)
	require.NoError(t, st.Migrate(context.Background()))
	waitMode(t, d, dispatcher.ModeLog)
	write(before, before+after)
	slow.Store(false)

	var published []string
	require.Eventually(t, func() bool {
		published = published[:0]
		seen := map[string]bool{}
		for _, m := range pub.Messages("log") {
			published = append(published, string(m.Payload))
			seen[string(m.Payload)] = true
		}
		return len(seen) == keys*(before+after)
	}, 3*time.Minute, 20*time.Millisecond)
	requireFirstDeliveriesInOrder(t, published, keys*(before+after))
}

// slotOf is the replication slot of a Postgres outbox table.
func slotOf(t testing.TB, db *sql.DB, table string) string {
	t.Helper()
	slot, _, err := pgstore.Names(context.Background(), db, table)
	require.NoError(t, err)
	return slot
}
