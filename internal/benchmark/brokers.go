package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/publisher"
	natspub "github.com/outboxgo/outbox/publisher/natspub"
	"github.com/outboxgo/outbox/publisher/redispub"
)

// The brokers case: the drain of a Postgres log-mode outbox into NATS JetStream
// (publisher/natspub) and into Redis Streams (publisher/redispub), the servers .ci/services
// starts (OUTBOX_TEST_NATS, OUTBOX_TEST_REDIS), each beside the broker's own ceiling measured
// in the same run. It prints, per broker:
//
//	case=<broker>-ceiling n=<n> batch=<n> rate=<msgs/s>   (publish-only: from memory, batch by batch, read back)
//	case=postgres-log-<broker>-drain n=<n> rate=<msgs/s> vs_ceiling=<x> duplicates=<n> elapsed=<d> publishing=<d>
//	case=postgres-logonly-<broker>-drain ...   (the same with log-only writes)
//
// publishing is the time the dispatcher spent in the publisher's PublishBatch, the rest of
// elapsed being the database's and the dispatcher's: the faster the broker, the larger that
// rest's share, and the lower vs_ceiling.
//
// Both publish through the same publisher to the benchmark's topic, into a new stream (NATS:
// a file stream of its own that takes the topic's subject; Redis: the stream of that name,
// emptied first), and count what an independent reader of the stream reads back, as the Kafka
// broker and drain cases do.

// benchBroker is a broker of the brokers case: a publisher, a new stream for each run, and
// a reader of that stream.
type benchBroker struct {
	name string
	// open returns a publisher, the topic to publish to (a new stream's), a function that reads the stream until
	// n distinct messages arrived (returning the duplicates), and a cleanup.
	open func(n int) (pub publisher.BatchPublisher, topic string, read func(ctx context.Context) (int, error), cleanup func(), err error)
}

// brokersCase runs the ceiling and the Postgres log-mode drains of each broker: rows kept,
// and log-only writes.
func brokersCase(n int, cfg dispatcher.Config) error {
	cfg.PollOnly = false
	var errs []error
	for _, b := range []benchBroker{natsBench(), redisBench()} {
		ceiling, err := brokerCeiling(b, n, cmp.Or(cfg.BatchSize, dispatcher.DefaultBatchSize))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s-ceiling: %w", b.name, err))
			continue
		}
		for _, d := range []struct{ db, mode string }{{"postgres", "log"}, {"postgres-logonly", "logonly"}} {
			label := "postgres-" + d.mode + "-" + b.name
			if err := brokerDrain(b, d.db, label, n, cfg, ceiling); err != nil {
				errs = append(errs, fmt.Errorf("%s-drain: %w", label, err))
			}
		}
	}
	return errors.Join(errs...)
}

// brokerCeiling publishes n messages from memory, batch by batch as the dispatcher
// publishes them, and returns the rate at which the reader got them all.
func brokerCeiling(b benchBroker, n, batch int) (float64, error) {
	pub, topic, read, cleanup, err := b.open(n)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	published := publishFromMemory(pub, topic, n, batch)
	dups, err := read(ctx)
	if err != nil {
		return 0, err
	}
	if err := <-published; err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	rate := float64(n) / elapsed.Seconds()
	fmt.Printf("case=%s-ceiling n=%d batch=%d rate=%.0f duplicates=%d elapsed=%v\n", b.name, n, batch, rate, dups, elapsed.Round(time.Millisecond))
	return rate, nil
}

// brokerDrain drains a backlog of n messages from the Postgres outbox dbName read through
// its change log into the broker, as drainCase does into Kafka, and prints it as label.
func brokerDrain(b benchBroker, dbName, label string, n int, cfg dispatcher.Config, ceiling float64) error {
	db, err := newDatabase(dbName)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return err
	}
	if err := fill(db.st, n); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	pub, _, read, cleanup, err := b.open(n)
	if err != nil {
		return err
	}
	defer cleanup()
	timed := &timedPublisher{BatchPublisher: pub}
	d, err := dispatcher.New(db.st, timed, cfg)
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
	dups, err := read(ctx)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	if mode := d.Mode(); mode != dispatcher.ModeLog {
		// Another run on the same server holding the replication slot, say.
		return fmt.Errorf("the dispatcher drained in %s mode, not log mode (see its warnings)", mode)
	}
	rate := float64(n) / elapsed.Seconds()
	fmt.Printf("case=%s-drain n=%d rate=%.0f vs_ceiling=%.2f duplicates=%d elapsed=%v publishing=%v\n",
		label, n, rate, rate/ceiling, dups, elapsed.Round(time.Millisecond), timed.total().Round(time.Millisecond))
	return nil
}

func envOr(name, def string) string { return cmp.Or(os.Getenv(name), def) }

// natsBench is NATS JetStream: a file stream of its own per run, read by an ordered consumer.
func natsBench() benchBroker {
	url := envOr("OUTBOX_TEST_NATS", "nats://127.0.0.1:4222")
	return benchBroker{name: "nats", open: func(n int) (publisher.BatchPublisher, string, func(context.Context) (int, error), func(), error) {
		nc, err := natsio.Connect(url)
		if err != nil {
			return nil, "", nil, nil, fmt.Errorf("connect to NATS (make services): %w", err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, "", nil, nil, err
		}
		name := "outbox_bench_" + strconv.FormatInt(time.Now().UnixNano(), 36)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A stream a killed run left on the topic's subject would refuse the new one.
		if old, err := js.StreamNameBySubject(ctx, topic); err == nil && strings.HasPrefix(old, "outbox_bench_") {
			js.DeleteStream(ctx, old)
		}
		stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{topic}})
		if err != nil {
			nc.Close()
			return nil, "", nil, nil, fmt.Errorf("create stream (JetStream on?): %w", err)
		}
		pub, err := natspub.New(natspub.Config{URL: url})
		if err != nil {
			js.DeleteStream(context.Background(), name)
			nc.Close()
			return nil, "", nil, nil, err
		}
		cleanup := func() {
			pub.Close()
			js.DeleteStream(context.Background(), name)
			nc.Close()
		}
		read := func(ctx context.Context) (int, error) {
			c, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
			if err != nil {
				return 0, err
			}
			it, err := c.Messages(jetstream.PullMaxMessages(2000))
			if err != nil {
				return 0, err
			}
			defer it.Stop()
			go func() { <-ctx.Done(); it.Stop() }()
			seen := make(map[string]struct{}, n)
			dups := 0
			for len(seen) < n {
				m, err := it.Next()
				if err != nil {
					return dups, fmt.Errorf("read %d of %d: %w", len(seen), n, cmp.Or(ctx.Err(), err))
				}
				id := m.Headers().Get(wmnats.WatermillUUIDHdr)
				if _, ok := seen[id]; ok {
					dups++
				}
				seen[id] = struct{}{}
			}
			return dups, nil
		}
		return pub, topic, read, cleanup, nil
	}}
}

// redisBench is Redis Streams: a stream of its own per run, read with XREAD by another
// client. The ceiling goes through redispub too: it was as fast as or faster than a plain
// go-redis pipeline of XAdd calls (with watermill's marshaller or with the fields in order),
// so it is the stricter reference.
func redisBench() benchBroker {
	url := envOr("OUTBOX_TEST_REDIS", "redis://127.0.0.1:6379/0")
	return benchBroker{name: "redis", open: func(n int) (publisher.BatchPublisher, string, func(context.Context) (int, error), func(), error) {
		opts, err := redis.ParseURL(url)
		if err != nil {
			return nil, "", nil, nil, err
		}
		reader := redis.NewClient(opts)
		if err := reader.Ping(context.Background()).Err(); err != nil {
			reader.Close()
			return nil, "", nil, nil, fmt.Errorf("connect to Redis (make services): %w", err)
		}
		name := topic
		reader.Del(context.Background(), name) // what a killed run left
		pub, err := redispub.New(redispub.Config{URL: url})
		if err != nil {
			reader.Close()
			return nil, "", nil, nil, err
		}
		cleanup := func() {
			pub.Close()
			reader.Del(context.Background(), name)
			reader.Close()
		}
		read := func(ctx context.Context) (int, error) {
			seen := make(map[string]struct{}, n)
			dups := 0
			last := "0"
			for len(seen) < n {
				res, err := reader.XRead(ctx, &redis.XReadArgs{Streams: []string{name, last}, Count: 2000, Block: 100 * time.Millisecond}).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					return dups, fmt.Errorf("read %d of %d: %w", len(seen), n, err)
				}
				for _, e := range res[0].Messages {
					last = e.ID
					id, _ := e.Values[wmredis.UUIDHeaderKey].(string)
					if _, ok := seen[id]; ok {
						dups++
					}
					seen[id] = struct{}{}
				}
			}
			return dups, nil
		}
		return pub, name, read, cleanup, nil
	}}
}

// timedPublisher adds up the time spent in PublishBatch.
type timedPublisher struct {
	publisher.BatchPublisher
	mu    sync.Mutex
	spent time.Duration
}

func (t *timedPublisher) PublishBatch(topic string, msgs []*message.Message) error {
	start := time.Now()
	err := t.BatchPublisher.PublishBatch(topic, msgs)
	t.mu.Lock()
	t.spent += time.Since(start)
	t.mu.Unlock()
	return err
}

func (t *timedPublisher) total() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.spent
}
