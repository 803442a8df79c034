package dispatcher_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// A database that several dispatchers share. open returns a new connection pool to it and
// the store on that pool, as another application instance would have.
type sharedDB struct {
	name  string // the test's name for it
	kind  string // sqlite, postgres or mariadb
	dsn   string
	table string
	open  func(t testing.TB, dsn, table string) (*sql.DB, dbtest.Store)
	// pollOnly keeps its dispatchers polling where the database has a change log.
	pollOnly bool
	// logOnly is a Postgres outbox whose messages only the WAL carries (Config.LogOnly).
	logOnly bool
}

// config is cfg for a dispatcher on the database.
func (shared sharedDB) config(cfg dispatcher.Config) dispatcher.Config {
	cfg.PollOnly = shared.pollOnly
	return cfg
}

// crashBound is how many messages a crashed dispatcher may leave to be sent again: its
// workers' claimed batches, or, reading the change log, the batch it records and the one it
// publishes meanwhile.
func (shared sharedDB) crashBound(batch int) int {
	if shared.pollOnly || shared.kind == "sqlite" {
		return dispatcher.DefaultWorkers * batch
	}
	return 2 * batch
}

// polling is the database with dispatchers that poll rather than read the change log.
func polling(newDB func(*testing.T) sharedDB) func(*testing.T) sharedDB {
	return func(t *testing.T) sharedDB {
		shared := newDB(t)
		shared.name += "-polling"
		shared.pollOnly = true
		return shared
	}
}

// serverDBs are the server databases, each read through its change log and polled.
var serverDBs = []func(*testing.T) sharedDB{sharedPostgres, polling(sharedPostgres), sharedMySQL, polling(sharedMySQL)}

// allDBs are serverDBs and SQLite.
var allDBs = append([]func(*testing.T) sharedDB{sharedSQLite}, serverDBs...)

func openPostgres(t testing.TB, dsn, table string) (*sql.DB, dbtest.Store) {
	db, err := pgstore.Open(dsn)
	require.NoError(t, err)
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: table, Logger: quiet()}))
	require.NoError(t, err)
	return db, st
}

func openPostgresLogOnly(t testing.TB, dsn, table string) (*sql.DB, dbtest.Store) {
	db, err := pgstore.Open(dsn)
	require.NoError(t, err)
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: table, Logger: quiet(), LogOnly: true}))
	require.NoError(t, err)
	return db, st
}

func openMySQL(t testing.TB, dsn, table string) (*sql.DB, dbtest.Store) {
	db, err := mysqlstore.Open(dsn)
	require.NoError(t, err)
	st, err := dbtest.EngineOf(mysqlstore.New(db, mysqlstore.Config{Table: table, Logger: quiet()}))
	require.NoError(t, err)
	return db, st
}

// prepare gives a test an in-process Kafka broker and a migrated outbox on shared, closed when
// the test ends.
func (shared sharedDB) prepare(t *testing.T) (brokers []string, db *sql.DB, st dbtest.Store) {
	t.Helper()
	cluster, err := kafkatest.NewCluster()
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	db, st = shared.open(t, shared.dsn, shared.table)
	t.Cleanup(func() { db.Close() })
	require.NoError(t, st.Migrate(context.Background()))
	return cluster.ListenAddrs(), db, st
}

func sharedPostgres(t *testing.T) sharedDB {
	_, schema := dbtest.Postgres(t)
	return sharedDB{name: "postgres", kind: "postgres", dsn: dbtest.PostgresDSN(), table: schema + ".outbox", open: openPostgres}
}

// logOnlyPostgres is Postgres with log-only writes: the table stays empty but for failed
// messages.
func logOnlyPostgres(t *testing.T) sharedDB {
	shared := sharedPostgres(t)
	shared.name, shared.logOnly, shared.open = "postgres-logonly", true, openPostgresLogOnly
	return shared
}

func sharedMySQL(t *testing.T) sharedDB {
	_, dsn := dbtest.MySQL(t)
	return sharedDB{name: "mariadb", kind: "mariadb", dsn: dsn, table: "outbox", open: openMySQL}
}

const (
	instanceMessages = 20000
	instanceKeys     = 1000
	instanceTopic    = "instances"
)

// fill writes n messages of 256 bytes over instanceKeys keys, 500 per transaction. The
// payload starts with the message's index.
func fill(t testing.TB, db *sql.DB, st dbtest.Store, n int) {
	ctx := context.Background()
	pad := strings.Repeat("x", 256)
	for start := 0; start < n; start += 500 {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		var msgs []store.Message
		for i := start; i < min(start+500, n); i++ {
			p := strconv.Itoa(i) + " "
			msgs = append(msgs, store.Message{Topic: instanceTopic, Key: fmt.Sprintf("k%d", i%instanceKeys), Payload: []byte(p + pad[len(p):])})
		}
		require.NoError(t, st.Write(ctx, tx, msgs...))
		require.NoError(t, tx.Commit())
	}
}

// verifyKafka reads n records back with an independent client and checks that each message
// arrived exactly once and each key's messages in write order.
func verifyKafka(t *testing.T, brokers []string, n int) {
	consumer, err := kafkatest.NewConsumer(brokers, instanceTopic)
	require.NoError(t, err)
	defer consumer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	recs, err := consumer.ReadN(ctx, n)
	require.NoError(t, err, "read %d of %d", len(recs), n)
	// Anything more would be a duplicate: give it a moment to show up.
	moreCtx, moreCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer moreCancel()
	more, _ := consumer.ReadN(moreCtx, 1)
	recs = append(recs, more...)

	seen := make(map[string]bool, n)
	last := map[string]int{}
	dups := 0
	for _, r := range recs {
		id := r.Headers[publisher.MetadataID]
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		i, err := strconv.Atoi(strings.Fields(string(r.Value))[0])
		require.NoError(t, err)
		if prev, ok := last[r.Key]; ok {
			require.Less(t, prev, i, "key %s out of order", r.Key)
		}
		last[r.Key] = i
	}
	require.Len(t, seen, n, "every message arrived")
	require.Zero(t, dups, "no message was published twice")
}

func waitAllDelivered(t *testing.T, st dbtest.Store, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		res, err := st.List(context.Background(), &store.ListParams{State: store.Pending, Limit: 1})
		require.NoError(t, err)
		return len(res.Messages) == 0
	}, 3*time.Minute, 20*time.Millisecond)
	res, err := st.List(context.Background(), &store.ListParams{State: store.Delivered, Limit: n + 1})
	require.NoError(t, err)
	require.Len(t, res.Messages, n)
}

func TestThreeDispatchersShareOneDatabase(t *testing.T) {
	for _, newDB := range serverDBs {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			brokers, db, st := shared.prepare(t)
			fill(t, db, st, instanceMessages)

			var wg sync.WaitGroup
			dispatchers := make([]*dispatcher.Dispatcher, 3)
			for i := range dispatchers {
				idb, ist := shared.open(t, shared.dsn, shared.table) // a pool of its own
				defer idb.Close()
				pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
				require.NoError(t, err)
				defer pub.Close()
				d, err := dispatcher.New(ist, pub, shared.config(dispatcher.Config{BatchSize: 500, Concurrency: 32, Logger: quiet()}))
				require.NoError(t, err)
				dispatchers[i] = d
				wg.Go(func() { require.NoError(t, d.Start(context.Background())) })
			}
			wg.Wait()
			waitAllDelivered(t, st, instanceMessages)
			for i, d := range dispatchers {
				require.NoError(t, d.Stop(context.Background()))
				t.Logf("dispatcher %d published %d", i, d.Stats().Published)
			}
			verifyKafka(t, brokers, instanceMessages)
		})
	}
}

// The same with three operating-system processes: this test binary, run again as a dispatcher.
func TestThreeDispatcherProcessesShareOneDatabase(t *testing.T) {
	for _, newDB := range serverDBs {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			brokers, db, st := shared.prepare(t)
			fill(t, db, st, instanceMessages)

			var procs []*exec.Cmd
			var logs []string
			for range 3 {
				cmd, log := startDispatcherProcess(t, shared, brokers, "empty", 500)
				procs = append(procs, cmd)
				logs = append(logs, log)
			}
			waitAllDelivered(t, st, instanceMessages)
			for i, p := range procs {
				err := p.Wait()
				out, _ := os.ReadFile(logs[i])
				require.NoError(t, err, "dispatcher process %d failed:\n%s", i, out)
				for _, line := range strings.Split(string(out), "\n") {
					if strings.Contains(line, "published") {
						t.Logf("process %d: %s", i, strings.TrimSpace(line))
					}
				}
			}
			verifyKafka(t, brokers, instanceMessages)
		})
	}
}

func openSQLite(t testing.TB, path, table string) (*sql.DB, dbtest.Store) {
	db, err := sqlitestore.Open(path)
	require.NoError(t, err)
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{Table: table, Logger: quiet()}))
	require.NoError(t, err)
	return db, st
}

var openers = map[string]func(t testing.TB, dsn, table string) (*sql.DB, dbtest.Store){
	"postgres": openPostgres, "mariadb": openMySQL, "sqlite": openSQLite,
}

// startDispatcherProcess runs this test binary again as a dispatcher process on shared; it
// logs to a file in the test's temporary directory. until is "empty" (stop once nothing is
// pending) or "killed" (run until killed).
func startDispatcherProcess(t *testing.T, shared sharedDB, brokers []string, until string, batch int) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDispatcherProcess$", "-test.v")
	cmd.Env = append(os.Environ(),
		"OUTBOX_PROCESS_DB="+shared.kind, "OUTBOX_PROCESS_POLL_ONLY="+strconv.FormatBool(shared.pollOnly), "OUTBOX_PROCESS_LOG_ONLY="+strconv.FormatBool(shared.logOnly), "OUTBOX_PROCESS_DSN="+shared.dsn, "OUTBOX_PROCESS_TABLE="+shared.table,
		"OUTBOX_PROCESS_BROKERS="+strings.Join(brokers, ","), "OUTBOX_PROCESS_UNTIL="+until,
		"OUTBOX_PROCESS_BATCH="+strconv.Itoa(batch))
	log, err := os.CreateTemp(t.TempDir(), "dispatcher-*.log")
	require.NoError(t, err)
	defer log.Close()
	cmd.Env = append(cmd.Env, "OUTBOX_PROCESS_LABEL="+filepath.Base(log.Name()))
	cmd.Stdout, cmd.Stderr = log, log
	require.NoError(t, cmd.Start())
	return cmd, log.Name()
}

// TestDispatcherProcess is the body of a dispatcher process started by the tests above; run
// directly, it does nothing.
func TestDispatcherProcess(t *testing.T) {
	kind := os.Getenv("OUTBOX_PROCESS_DB")
	if kind == "" {
		t.Skip("run as a child process by the multi-process tests")
	}
	open := openers[kind]
	if logOnly, _ := strconv.ParseBool(os.Getenv("OUTBOX_PROCESS_LOG_ONLY")); logOnly {
		open = openPostgresLogOnly
	}
	db, st := open(t, os.Getenv("OUTBOX_PROCESS_DSN"), os.Getenv("OUTBOX_PROCESS_TABLE"))
	defer db.Close()
	kpub, err := kafkapub.New(kafkapub.Config{Brokers: strings.Split(os.Getenv("OUTBOX_PROCESS_BROKERS"), ",")})
	require.NoError(t, err)
	defer kpub.Close()
	pub := labelled{kpub, os.Getenv("OUTBOX_PROCESS_LABEL")}
	batch, _ := strconv.Atoi(os.Getenv("OUTBOX_PROCESS_BATCH"))
	pollOnly, _ := strconv.ParseBool(os.Getenv("OUTBOX_PROCESS_POLL_ONLY"))
	d, err := dispatcher.New(st, pub, dispatcher.Config{BatchSize: batch, Concurrency: 32, Lease: processLease, PollOnly: pollOnly, Logger: slog.Default()})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	if os.Getenv("OUTBOX_PROCESS_UNTIL") == "killed" {
		select {} // until SIGKILL
	}
	waitNonePending(t, st, 3*time.Minute)
	require.NoError(t, d.Stop(context.Background()))
	t.Logf("published %d", d.Stats().Published)
}

// processHeader names the dispatcher process that published a message, so that a test
// reading Kafka can tell which process a duplicate came from.
const processHeader = "outbox-test-process"

// labelled is a Kafka publisher that sets processHeader on every message.
type labelled struct {
	*kafkapub.Publisher
	label string
}

func (p labelled) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

func (p labelled) PublishBatch(topic string, msgs []*message.Message) error {
	for _, m := range msgs {
		m.Metadata.Set(processHeader, p.label)
	}
	return p.Publisher.PublishBatch(topic, msgs)
}

// processLease is short so that a killed process's messages come back quickly, and long enough
// that a loaded machine publishes and marks a batch within it (else the batch goes out twice).
const processLease = 3 * time.Second
