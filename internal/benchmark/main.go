// Command benchmark measures the dispatcher against real databases and an in-process Kafka
// broker (kfake over TCP), counting what arrives with an independent client (franz-go). It is
// what `make bench` runs.
//
//	go run ./internal/benchmark [-cases drain,scaling,idle,forwarder,live,memory] [-dbs sqlite,postgres,mariadb]
//	    [-modes poll,log,logonly] [-n 50000] [-idle 20s] [-live-rate 1000] [-live-for 20s] [-memory-n 1000000]
//	    [-batch N] [-concurrency N] [-workers N] [-keys 1000] [-delete=false]
//
// It prints one line per case:
//
//	case=broker n=<messages> batch=<n> rate=<msgs/s>   (the same publishing, from memory: the ceiling)
//	case=<db>-rawloop-drain n=<messages> rate=<msgs/s>   (a hand-written loop: the reference)
//	case=<db>-<mode>-drain n=<messages> rate=<msgs/s> vs_rawloop=<x> duplicates=<n> elapsed=<d> write_rate=<msgs/s>
//	case=<db>-<mode>-delete-drain ...   (the same with Config.DeleteDelivered: rows deleted, as the hand loop does)
//	case=<db>-poll-4x1000-drain ...   (scaling: twice the default workers and batch size, polling)
//	case=<db>-poll-onekey-drain ...   (scaling: a backlog of one key, polling)
//	case=postgres-lanes[-delete]-drain ...   (lanes, not run by default: a prototype of the next claim model, see lanes.go)
//	case=<db>-<mode>-idle queries_per_s=<q> wake_p50=<ms> wake_p99=<ms> other_instance_wake_p50=<ms> ...
//	case=pg-vs-forwarder n=<n> outbox=<msgs/s> outbox_poll=<msgs/s> forwarder=<msgs/s> ratio=<x> poll_ratio=<x>   (log mode, polling)
//	case=<db>-<mode>-live rate=<msgs/s> n=<n> p50=<ms> p99=<ms>   (and forwarder-live)
//	case=pg-memory n=<n> peak_rss=<MiB> rate=<msgs/s>
//	case=postgres-poll-failover claimed=<n> failover=<s>   (SIGKILL of a dispatcher to its claimed messages published by another)
//
// Drain: a backlog of n messages (256-byte payloads, 1000 keys by default) is written first; the rate is
// n divided by the time from the dispatcher's start to the last message read back from Kafka;
// write_rate is how fast Write stored the backlog (1,000 messages a transaction, one writer).
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
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
)

const topic = "bench"

// keys is how many keys the messages of every case are spread over (-keys).
var keys = 1000

func main() {
	o := parseFlags()
	if o.cpuProfile != "" {
		stop, err := profileCPU(o.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer stop()
	}
	if o.childDSN != "" {
		if err := childDrain(o.childDSN, strings.Split(o.childBrokers, ","), o.childPoll); err != nil {
			fmt.Fprintf(os.Stderr, "child-drain: %v\n", err)
			os.Exit(1)
		}
		return
	}
	run, err := parseCases(o.cases)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b := &bench{options: o, rawRates: map[string]float64{}, cfg: dispatcher.Config{
		BatchSize: o.batch, Concurrency: o.concurrency, Workers: o.workers, Logger: warnLogger(),
	}}
	if run["broker"] {
		b.report("broker", brokerCase(o.n, cmp.Or(o.batch, dispatcher.DefaultBatchSize)))
	}
	if run["brokers"] {
		b.report("brokers", brokersCase(o.n, b.cfg)) // NATS JetStream and Redis Streams (brokers.go)
	}
	if run["drain"] || run["scaling"] || run["lanes"] {
		b.measureRawLoops()
	}
	if run["drain"] {
		b.forEachMode("drain", b.drainTwice)
	}
	if run["scaling"] {
		b.runScaling()
	}
	if run["lanes"] {
		b.runLanes()
	}
	if run["idle"] && o.idle > 0 {
		b.forEachMode("idle", func(name, label string, cfg dispatcher.Config) error { return idleCase(name, label, o.idle, cfg) })
	}
	if run["forwarder"] {
		b.report("pg-vs-forwarder", forwarderCase(o.n, dispatcher.Config{Logger: b.cfg.Logger}))
	}
	if run["live"] {
		b.runLive()
	}
	if run["failover"] {
		b.report("postgres-poll-failover", failoverCase())
	}
	if run["memory"] {
		b.report("pg-memory", memoryCase(o.memoryN))
	}
	if b.failed {
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	dbs, cases, modes              string
	n, batch, concurrency, workers int
	idle, liveFor                  time.Duration
	liveRate, memoryN              int
	deleted                        bool
	childDSN, childBrokers         string
	childPoll                      bool
	cpuProfile                     string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.dbs, "dbs", "sqlite,postgres,mariadb", "databases to measure")
	flag.IntVar(&o.n, "n", 50000, "backlog size for the drain cases")
	flag.IntVar(&keys, "keys", keys, "keys the messages of every case are spread over (1: one key holds the whole backlog)")
	flag.DurationVar(&o.idle, "idle", 20*time.Second, "how long to count an idle dispatcher's queries (0 skips the idle cases)")
	flag.IntVar(&o.batch, "batch", 0, "dispatcher BatchSize (0: default)")
	flag.IntVar(&o.concurrency, "concurrency", 0, "dispatcher Concurrency (0: default)")
	flag.IntVar(&o.workers, "workers", 0, "dispatcher Workers (0: default)")
	flag.StringVar(&o.cases, "cases", "broker,brokers,drain,scaling,idle,forwarder,live,memory,failover", "cases to run")
	flag.StringVar(&o.modes, "modes", "poll,log,logonly", "how dispatchers find messages in the drain, idle and live cases: poll; log where the database has a change log; logonly (Postgres) for log-only writes")
	flag.IntVar(&o.liveRate, "live-rate", 1000, "messages per second written in the live cases")
	flag.DurationVar(&o.liveFor, "live-for", 20*time.Second, "how long the live cases write")
	flag.BoolVar(&o.deleted, "delete", true, "drain a second time with Config.DeleteDelivered (the <db>-<mode>-delete-drain lines)")
	flag.IntVar(&o.memoryN, "memory-n", 1000000, "backlog size for the memory case")
	flag.StringVar(&o.childDSN, "child-drain", "", "internal: drain this Postgres outbox as the memory case's child process")
	flag.StringVar(&o.childBrokers, "child-brokers", "", "internal: the brokers of -child-drain")
	flag.BoolVar(&o.childPoll, "child-poll", false, "internal: the -child-drain dispatcher polls (Config.PollOnly)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (broker, consumer and dispatcher) to this file")
	flag.Parse()
	return o
}

// profileCPU starts writing a CPU profile to path; stop ends it.
func profileCPU(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	pprof.StartCPUProfile(f)
	return pprof.StopCPUProfile, nil
}

// parseCases returns the set of cases named in the comma-separated list.
func parseCases(list string) (map[string]bool, error) {
	run := map[string]bool{}
	for _, c := range strings.Split(list, ",") {
		if !slices.Contains([]string{"broker", "brokers", "drain", "scaling", "lanes", "idle", "forwarder", "live", "memory", "failover"}, c) {
			return nil, fmt.Errorf("unknown case %q", c)
		}
		run[c] = true
	}
	return run, nil
}

// bench runs the cases with the flags' settings, and remembers whether one failed.
type bench struct {
	options
	cfg      dispatcher.Config
	rawRates map[string]float64 // by database: the hand loop's drain rate
	failed   bool
}

// report prints a case's error, if any, and marks the run failed.
func (b *bench) report(label string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "case=%s: %v\n", label, err)
		b.failed = true
	}
}

// forEachMode runs a case for every database and mode; a case's label is database-mode.
func (b *bench) forEachMode(what string, f func(name, label string, cfg dispatcher.Config) error) {
	for _, name := range strings.Split(b.dbs, ",") {
		for _, mode := range strings.Split(b.modes, ",") {
			if (mode == "log" && name == "sqlite") || (mode == "logonly" && name != "postgres") {
				continue // SQLite has no change log; only Postgres has log-only writes
			}
			cfg := b.cfg
			cfg.PollOnly = mode == "poll"
			label := name + "-" + mode
			db := name
			if mode == "logonly" {
				db = label
			}
			b.report(label+"-"+what, f(db, label, cfg))
		}
	}
}

// measureRawLoops runs the hand loop on each database first: every drain line gives its
// rate beside it.
func (b *bench) measureRawLoops() {
	for _, name := range strings.Split(b.dbs, ",") {
		rate, err := rawLoopCase(name, b.n)
		b.report(name+"-rawloop-drain", err)
		b.rawRates[name] = rate
	}
}

// drainTwice drains a backlog, then another with Config.DeleteDelivered unless -delete=false.
func (b *bench) drainTwice(name, label string, cfg dispatcher.Config) error {
	raw := b.rawRates[strings.TrimSuffix(name, "-logonly")]
	if err := drainCase(name, label, b.n, cfg, raw); err != nil || !b.deleted || strings.HasSuffix(name, "-logonly") {
		return err // log-only messages have no rows to delete
	}
	cfg.DeleteDelivered = true
	return drainCase(name, label+"-delete", b.n, cfg, raw)
}

// runScaling drains with twice the default workers and batch size: each batch then holds as
// many keys as the backlog has, so most messages wait behind other claims, which must not
// cost a claim a look at each of them. Then a backlog of one key, polling: a claim takes
// messages whose earlier messages of the key it takes too, which must not cost it a look at
// each of those either.
func (b *bench) runScaling() {
	for _, name := range strings.Split(b.dbs, ",") {
		cfg := b.cfg
		cfg.PollOnly, cfg.Workers, cfg.BatchSize = true, 2*dispatcher.DefaultWorkers, 2*dispatcher.DefaultBatchSize
		label := fmt.Sprintf("%s-poll-%dx%d", name, cfg.Workers, cfg.BatchSize)
		b.report(label+"-drain", drainCase(name, label, b.n, cfg, b.rawRates[name]))
	}
	all := keys
	defer func() { keys = all }()
	keys = 1
	for _, name := range strings.Split(b.dbs, ",") {
		cfg := b.cfg
		cfg.PollOnly = true
		b.report(name+"-poll-onekey-drain", drainCase(name, name+"-poll-onekey", b.n, cfg, b.rawRates[name]))
	}
}

// runLanes drains through a prototype of the next claim model, beside the library
// (lanes.go): Postgres only.
func (b *bench) runLanes() {
	for _, del := range []bool{false, true} {
		b.report("postgres-lanes-drain", lanesCase("postgres", b.n, cmp.Or(b.batch, dispatcher.DefaultBatchSize), del, b.rawRates["postgres"]))
	}
}

// runLive runs the live case for every database and mode, then for watermill's forwarder.
func (b *bench) runLive() {
	b.forEachMode("live", func(name, label string, cfg dispatcher.Config) error {
		return liveCase(name, label, b.liveRate, b.liveFor, cfg)
	})
	b.report("forwarder-live", forwarderLiveCase(b.liveRate, b.liveFor))
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
	began := time.Now()
	if err := fill(db.st, n); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	writeRate := float64(n) / time.Since(began).Seconds()
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
	fmt.Printf("case=%s-drain n=%d rate=%.0f vs_rawloop=%s duplicates=%d elapsed=%v write_rate=%.0f\n", label, n, rate, vs, dups, elapsed.Round(time.Millisecond), writeRate)
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

// idleCase prints the queries per second that a dispatcher sends to an empty outbox, then
// how soon it publishes a message committed through its own store and through another pool.
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

	qps, err := measureIdleRate(db, counted, window)
	if err != nil {
		return err
	}
	local, remote, err := measureWakeUps(db, own, brokers)
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

// measureIdleRate returns the queries per second over window that the server counts, or,
// where it cannot, the claims per second of counted.
func measureIdleRate(db *database, counted *countingStore, window time.Duration) (float64, error) {
	time.Sleep(5 * time.Second) // let the idle backoff settle
	count := func() (int64, error) {
		if db.queries != nil {
			return db.queries()
		}
		return counted.claims.Load(), nil
	}
	q0, err := count()
	if err != nil {
		return 0, err
	}
	time.Sleep(window)
	q1, err := count()
	if err != nil {
		return 0, err
	}
	return float64(q1-q0) / window.Seconds(), nil
}

// measureWakeUps returns the wake-up latencies of messages committed through the
// dispatcher's own store (this process), then through another connection pool (another
// instance), until Kafka has them.
func measureWakeUps(db *database, own dbtest.Store, brokers []string) (local, remote []time.Duration, err error) {
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return nil, nil, err
	}
	defer consumer.Close()
	local, err = wakeLatency(own, consumer)
	if err != nil {
		return nil, nil, err
	}
	other, err := db.open()
	if err != nil {
		return nil, nil, err
	}
	defer other.DB().Close()
	remote, err = wakeLatency(other, consumer)
	if err != nil {
		return nil, nil, err
	}
	return local, remote, nil
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
