// Command benchmark measures the dispatcher against real databases and an in-process Kafka
// broker (kfake over TCP), counting what arrives with an independent client (franz-go). It is
// what `make bench` runs.
//
//	go run ./internal/benchmark [-cases drain,scaling,idle,forwarder,live,memory] [-dbs sqlite,postgres,mariadb]
//	    [-modes poll,log,logonly] [-n 50000] [-idle 20s] [-live-rate 1000] [-live-for 20s] [-memory-n 1000000]
//	    [-batch N] [-concurrency N] [-workers N] [-delete=false]
//
// It prints one line per case:
//
//	case=broker n=<messages> batch=<n> rate=<msgs/s>   (the same publishing, from memory: the ceiling)
//	case=<db>-rawloop-drain n=<messages> rate=<msgs/s>   (a hand-written loop: the reference)
//	case=<db>-<mode>-drain n=<messages> rate=<msgs/s> vs_rawloop=<x> duplicates=<n>
//	case=<db>-<mode>-delete-drain ...   (the same with Config.DeleteDelivered: rows deleted, as the hand loop does)
//	case=<db>-poll-4x1000-drain ...   (scaling: twice the default workers and batch size, polling)
//	case=postgres-lanes[-delete]-drain ...   (lanes, not run by default: a prototype of the next claim model, see lanes.go)
//	case=<db>-<mode>-idle queries_per_s=<q> wake_p50=<ms> wake_p99=<ms> other_instance_wake_p50=<ms> ...
//	case=pg-vs-forwarder n=<n> outbox=<msgs/s> forwarder=<msgs/s> ratio=<x>
//	case=<db>-<mode>-live rate=<msgs/s> n=<n> p50=<ms> p99=<ms>   (and forwarder-live)
//	case=pg-memory n=<n> peak_rss=<MiB> rate=<msgs/s>
//	case=postgres-poll-failover claimed=<n> failover=<s>   (SIGKILL of a dispatcher to its claimed messages published by another)
//
// Drain: a backlog of n messages (256-byte payloads, 1000 keys) is written first; the rate is
// n divided by the time from the dispatcher's start to the last message read back from Kafka.
// Idle: an empty outbox; queries per second that an idle dispatcher sends: on Postgres those
// its connection pool sends (pgx's query tracer; the server's pg_stat_database reports up to
// 10 s late, too coarse for a 20 s window), on MariaDB the server's count (Questions), on
// SQLite, which has no server, the claims the dispatcher makes (one statement each); then the latency from
// a commit to its arrival in Kafka, through the dispatcher's own store and through another
// connection pool. Forwarder: the same Postgres backlog through watermill's forwarder
// (watermill-sql, 10 ms poll). Live: one message per transaction at the given rate, commit to
// consume. Memory: the peak RSS (VmHWM) of a child process draining a large backlog.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

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

const (
	topic = "bench"
	keys  = 1000
)

func main() {
	dbs := flag.String("dbs", "sqlite,postgres,mariadb", "databases to measure")
	n := flag.Int("n", 50000, "backlog size for the drain cases")
	idle := flag.Duration("idle", 20*time.Second, "how long to count an idle dispatcher's queries (0 skips the idle cases)")
	batch := flag.Int("batch", 0, "dispatcher BatchSize (0: default)")
	concurrency := flag.Int("concurrency", 0, "dispatcher Concurrency (0: default)")
	workers := flag.Int("workers", 0, "dispatcher Workers (0: default)")
	cases := flag.String("cases", "broker,brokers,drain,scaling,idle,forwarder,live,memory,failover", "cases to run")
	modes := flag.String("modes", "poll,log,logonly", "how dispatchers find messages in the drain, idle and live cases: poll; log where the database has a change log; logonly (Postgres) for log-only writes")
	liveRate := flag.Int("live-rate", 1000, "messages per second written in the live cases")
	liveFor := flag.Duration("live-for", 20*time.Second, "how long the live cases write")
	deleted := flag.Bool("delete", true, "drain a second time with Config.DeleteDelivered (the <db>-<mode>-delete-drain lines)")
	memoryN := flag.Int("memory-n", 1000000, "backlog size for the memory case")
	childDSN := flag.String("child-drain", "", "internal: drain this Postgres outbox as the memory case's child process")
	childBrokers := flag.String("child-brokers", "", "internal: the brokers of -child-drain")
	childPoll := flag.Bool("child-poll", false, "internal: the -child-drain dispatcher polls (Config.PollOnly)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (broker, consumer and dispatcher) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *childDSN != "" {
		if err := childDrain(*childDSN, strings.Split(*childBrokers, ","), *childPoll); err != nil {
			fmt.Fprintf(os.Stderr, "child-drain: %v\n", err)
			os.Exit(1)
		}
		return
	}
	run := map[string]bool{}
	for _, c := range strings.Split(*cases, ",") {
		if !slices.Contains([]string{"broker", "brokers", "drain", "scaling", "lanes", "idle", "forwarder", "live", "memory", "failover"}, c) {
			fmt.Fprintf(os.Stderr, "unknown case %q\n", c)
			os.Exit(2)
		}
		run[c] = true
	}
	cfg := dispatcher.Config{BatchSize: *batch, Concurrency: *concurrency, Workers: *workers, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	failed := false
	// each runs a case for every database and mode; a case's label is database-mode.
	each := func(what string, f func(name, label string, cfg dispatcher.Config) error) {
		for _, name := range strings.Split(*dbs, ",") {
			for _, mode := range strings.Split(*modes, ",") {
				if (mode == "log" && name == "sqlite") || (mode == "logonly" && name != "postgres") {
					continue // SQLite has no change log; only Postgres has log-only writes
				}
				cfg := cfg
				cfg.PollOnly = mode == "poll"
				label := name + "-" + mode
				db := name
				if mode == "logonly" {
					db = label
				}
				if err := f(db, label, cfg); err != nil {
					fmt.Fprintf(os.Stderr, "case=%s-%s: %v\n", label, what, err)
					failed = true
				}
			}
		}
	}
	if run["broker"] {
		if err := brokerCase(*n, cmp.Or(*batch, dispatcher.DefaultBatchSize)); err != nil {
			fmt.Fprintf(os.Stderr, "case=broker: %v\n", err)
			failed = true
		}
	}
	if run["brokers"] {
		if err := brokersCase(*n, cfg); err != nil { // NATS JetStream and Redis Streams (brokers.go)
			fmt.Fprintf(os.Stderr, "case=brokers: %v\n", err)
			failed = true
		}
	}
	// The hand loop on each database first: every drain line gives its rate beside it.
	rawRates := map[string]float64{}
	for _, name := range strings.Split(*dbs, ",") {
		if !run["drain"] && !run["scaling"] && !run["lanes"] {
			break
		}
		rate, err := rawLoopCase(name, *n)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case=%s-rawloop-drain: %v\n", name, err)
			failed = true
		}
		rawRates[name] = rate
	}
	if run["drain"] {
		each("drain", func(name, label string, cfg dispatcher.Config) error {
			raw := rawRates[strings.TrimSuffix(name, "-logonly")]
			if err := drainCase(name, label, *n, cfg, raw); err != nil || !*deleted || strings.HasSuffix(name, "-logonly") {
				return err // log-only messages have no rows to delete
			}
			cfg.DeleteDelivered = true
			return drainCase(name, label+"-delete", *n, cfg, raw)
		})
	}
	if run["scaling"] {
		// Twice the default workers and batch size: each batch then holds as many keys as the
		// backlog has, so most messages wait behind other claims, which must not cost a claim
		// a look at each of them.
		for _, name := range strings.Split(*dbs, ",") {
			cfg := cfg
			cfg.PollOnly, cfg.Workers, cfg.BatchSize = true, 2*dispatcher.DefaultWorkers, 2*dispatcher.DefaultBatchSize
			label := fmt.Sprintf("%s-poll-%dx%d", name, cfg.Workers, cfg.BatchSize)
			if err := drainCase(name, label, *n, cfg, rawRates[name]); err != nil {
				fmt.Fprintf(os.Stderr, "case=%s-drain: %v\n", label, err)
				failed = true
			}
		}
	}
	if run["lanes"] {
		// A prototype of the next claim model, beside the library (lanes.go): Postgres only.
		for _, del := range []bool{false, true} {
			if err := lanesCase("postgres", *n, cmp.Or(*batch, dispatcher.DefaultBatchSize), del, rawRates["postgres"]); err != nil {
				fmt.Fprintf(os.Stderr, "case=postgres-lanes-drain: %v\n", err)
				failed = true
			}
		}
	}
	if run["idle"] && *idle > 0 {
		each("idle", func(name, label string, cfg dispatcher.Config) error { return idleCase(name, label, *idle, cfg) })
	}
	if run["forwarder"] {
		if err := forwarderCase(*n, dispatcher.Config{Logger: cfg.Logger}); err != nil {
			fmt.Fprintf(os.Stderr, "case=pg-vs-forwarder: %v\n", err)
			failed = true
		}
	}
	if run["live"] {
		each("live", func(name, label string, cfg dispatcher.Config) error {
			return liveCase(name, label, *liveRate, *liveFor, cfg)
		})
		if err := forwarderLiveCase(*liveRate, *liveFor); err != nil {
			fmt.Fprintf(os.Stderr, "case=forwarder-live: %v\n", err)
			failed = true
		}
	}
	if run["failover"] {
		if err := failoverCase(); err != nil {
			fmt.Fprintf(os.Stderr, "case=postgres-poll-failover: %v\n", err)
			failed = true
		}
	}
	if run["memory"] {
		if err := memoryCase(*memoryN); err != nil {
			fmt.Fprintf(os.Stderr, "case=pg-memory: %v\n", err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// queryCounter counts the queries a pgx connection sends.
type queryCounter struct{ n *atomic.Int64 }

func (c queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// database is a fresh outbox, plus a way to open another pool on it and to count the
// queries the server received.
type database struct {
	st      dbtest.Store
	open    func() (dbtest.Store, error)
	queries func() (int64, error) // nil: the server cannot tell
	// counting, where set, opens another pool that counts the queries it sends, for the
	// idle case's dispatcher.
	counting func() (dbtest.Store, func() int64, error)
	cleanup  func()
}

func newDatabase(name string) (*database, error) {
	ctx := context.Background()
	switch name {
	case "sqlite":
		dir, err := os.MkdirTemp("", "outbox-bench-")
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, "bench.db")
		open := func() (dbtest.Store, error) {
			db, err := sqlitestore.Open(path)
			if err != nil {
				return nil, err
			}
			return dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
		}
		st, err := open()
		if err != nil {
			return nil, err
		}
		return &database{st: st, open: open, cleanup: func() { os.RemoveAll(dir) }}, st.Migrate(ctx)
	case "postgres", "postgres-logonly":
		pg, err := newPostgres()
		if err != nil {
			return nil, err
		}
		open := func() (dbtest.Store, error) {
			db, err := pgstore.Open(pg.dsn)
			if err != nil {
				return nil, err
			}
			return dbtest.EngineOf(pgstore.New(db, pgstore.Config{LogOnly: name == "postgres-logonly"}))
		}
		st, err := open()
		if err != nil {
			pg.drop()
			return nil, err
		}
		d := &database{st: st, open: open}
		// The idle case counts the queries the dispatcher's own pool sends. Postgres's own
		// count (pg_stat_database) is no measure at this scale: a backend reports it up to
		// 10 s late, so a 20 s window counts 3 of 10 queries, or start-up work as idle
		// queries. Only the idle case uses this pool: a pgx tracer slows the others.
		d.counting = func() (dbtest.Store, func() int64, error) {
			var sent atomic.Int64
			cfg, err := pgx.ParseConfig(pg.dsn)
			if err != nil {
				return nil, nil, err
			}
			cfg.Tracer = queryCounter{&sent}
			// Pinged as pgstore.Open's pools are: after 10 s idle, not pgx's 1 s.
			pool := stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(_ context.Context, p stdlib.ShouldPingParams) bool {
				return p.IdleDuration > 10*time.Second
			}))
			cst, err := dbtest.EngineOf(pgstore.New(pool, pgstore.Config{LogOnly: name == "postgres-logonly"}))
			return cst, sent.Load, err
		}
		d.cleanup = func() {
			st.DB().Close()
			pg.drop()
		}
		return d, st.Migrate(ctx)
	case "mariadb", "mysql":
		admin, err := mysqlstore.Open(dbtest.MySQLDSN())
		if err != nil {
			return nil, err
		}
		dbName := dbtest.Name("outbox_bench")
		if _, err := admin.Exec("CREATE DATABASE " + dbName); err != nil {
			return nil, fmt.Errorf("create database (is MariaDB running? make services): %w", err)
		}
		cfg, err := mysql.ParseDSN(dbtest.MySQLDSN())
		if err != nil {
			return nil, err
		}
		cfg.DBName = dbName
		open := func() (dbtest.Store, error) {
			db, err := mysqlstore.Open(cfg.FormatDSN())
			if err != nil {
				return nil, err
			}
			return dbtest.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
		}
		st, err := open()
		if err != nil {
			return nil, err
		}
		d := &database{st: st, open: open}
		var own int64
		d.queries = func() (int64, error) {
			// Questions counts every statement clients sent, these reads of it included: take
			// them out.
			own++
			var name string
			var q int64
			err := admin.QueryRow("SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &q)
			return q - own, err
		}
		d.cleanup = func() {
			st.DB().Close()
			admin.Exec("DROP DATABASE " + dbName)
			admin.Close()
		}
		return d, st.Migrate(ctx)
	}
	return nil, fmt.Errorf("unknown database %q", name)
}

func fill(st dbtest.Store, n int) error {
	ctx := context.Background()
	payload := []byte(strings.Repeat("p", 256))
	for start := 0; start < n; start += 1000 {
		msgs := make([]store.Message, 0, 1000)
		for i := start; i < min(start+1000, n); i++ {
			msgs = append(msgs, store.Message{Topic: topic, Key: fmt.Sprintf("key-%d", i%keys), Payload: payload})
		}
		tx, err := st.DB().BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := st.Write(ctx, tx, msgs...); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func drainCase(name, label string, n int, cfg dispatcher.Config, rawRate float64) error {
	db, err := newDatabase(name)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return err
	}
	if err := fill(db.st, n); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return err
	}
	defer consumer.Close()

	d, err := dispatcher.New(db.st, pub, cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop(context.Background())
	seen := make(map[string]bool, n)
	dups := 0
	for len(seen) < n {
		recs, err := consumer.Poll(ctx)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("timed out with %d of %d", len(seen), n)
		}
		for _, r := range recs {
			id := r.Headers[publisher.MetadataID]
			if seen[id] {
				dups++
			}
			seen[id] = true
		}
	}
	elapsed := time.Since(start)
	rate := float64(n) / elapsed.Seconds()
	vs := "n/a"
	if rawRate > 0 {
		vs = fmt.Sprintf("%.2f", rate/rawRate)
	}
	fmt.Printf("case=%s-drain n=%d rate=%.0f vs_rawloop=%s duplicates=%d elapsed=%v\n", label, n, rate, vs, dups, elapsed.Round(time.Millisecond))
	return nil
}

// countingStore counts claims, for SQLite, whose queries no server counts.
type countingStore struct {
	dbtest.Store
	claims atomic.Int64
}

func (c *countingStore) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	c.claims.Add(1)
	return c.Store.Claim(ctx, p)
}

func idleCase(name, label string, window time.Duration, cfg dispatcher.Config) error {
	db, err := newDatabase(name)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return err
	}
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	own := db.st // the dispatcher's store
	if db.counting != nil {
		st, sent, err := db.counting()
		if err != nil {
			return err
		}
		defer st.DB().Close()
		own, db.queries = st, func() (int64, error) { return sent(), nil }
	}
	counted := &countingStore{Store: own}
	d, err := dispatcher.New(counted, pub, cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop(ctx)

	time.Sleep(5 * time.Second) // let the idle backoff settle
	count := func() (int64, error) {
		if db.queries != nil {
			return db.queries()
		}
		return counted.claims.Load(), nil
	}
	q0, err := count()
	if err != nil {
		return err
	}
	time.Sleep(window)
	q1, err := count()
	if err != nil {
		return err
	}
	qps := float64(q1-q0) / window.Seconds()

	// Wake-up latency: a message committed through the dispatcher's own store (this process),
	// then through another connection pool (another instance), until Kafka has it.
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return err
	}
	defer consumer.Close()
	local, err := wakeLatency(own, consumer)
	if err != nil {
		return err
	}
	other, err := db.open()
	if err != nil {
		return err
	}
	defer other.DB().Close()
	remote, err := wakeLatency(other, consumer)
	if err != nil {
		return err
	}
	what := "queries_per_s"
	if db.queries == nil {
		what = "claims_per_s"
	}
	fmt.Printf("case=%s-idle %s=%.2f wake_p50=%.1fms wake_p99=%.1fms other_instance_wake_p50=%.1fms other_instance_wake_p99=%.1fms\n",
		label, what, qps, ms(local[len(local)/2]), ms(local[len(local)*99/100]), ms(remote[len(remote)/2]), ms(remote[len(remote)*99/100]))
	return nil
}

// wakeLatency writes 20 messages through st, a few seconds apart so that the dispatcher is
// back in its slow idle poll, and returns the sorted commit-to-consume latencies.
func wakeLatency(st dbtest.Store, consumer *kafkatest.Consumer) ([]time.Duration, error) {
	ctx := context.Background()
	var lat []time.Duration
	for range 20 {
		time.Sleep(1500 * time.Millisecond)
		if err := st.Write(ctx, st.DB(), store.Message{Topic: topic, Payload: []byte("wake")}); err != nil {
			return nil, err
		}
		committed := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		recs, err := consumer.ReadN(rctx, 1)
		cancel()
		if err != nil || len(recs) == 0 {
			return nil, fmt.Errorf("wake-up message not received: %v", err)
		}
		lat = append(lat, recs[0].Received.Sub(committed))
	}
	slices.Sort(lat)
	return lat, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
