package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

// forwarderKeyHeader carries the message key through the forwarder's envelope, so that its
// Kafka records are keyed (and ordered per key) like the dispatcher's.
const forwarderKeyHeader = "key"

// forwarderTopic is the forwarder's default SQL topic: its table is watermill_forwarder_topic.
const forwarderTopic = "forwarder_topic"

// forwarderCase drains the same backlog with the dispatcher, with its default settings (log
// mode) and polling, and with watermill's forwarder, each from a fresh Postgres database
// into a fresh broker. ratio is log mode's, poll_ratio polling's.
func forwarderCase(n int, cfg dispatcher.Config) error {
	outbox, err := dispatcherDrain(n, cfg)
	if err != nil {
		return fmt.Errorf("dispatcher: %w", err)
	}
	cfg.PollOnly = true
	polled, err := dispatcherDrain(n, cfg)
	if err != nil {
		return fmt.Errorf("dispatcher, polling: %w", err)
	}
	fwd, err := forwarderDrain(n)
	if err != nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	fmt.Printf("case=pg-vs-forwarder n=%d outbox=%.0f outbox_poll=%.0f forwarder=%.0f ratio=%.2f poll_ratio=%.2f\n",
		n, outbox, polled, fwd, outbox/fwd, polled/fwd)
	return nil
}

// dispatcherDrain is the postgres drain case with the dispatcher's settings cfg; it returns
// messages per second.
func dispatcherDrain(n int, cfg dispatcher.Config) (float64, error) {
	db, err := newDatabase("postgres")
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return 0, err
	}
	if err := fill(db.st, n); err != nil {
		return 0, fmt.Errorf("fill: %w", err)
	}
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return 0, err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return 0, err
	}
	defer consumer.Close()
	d, err := dispatcher.New(db.st, pub, cfg)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := d.Start(ctx); err != nil {
		return 0, err
	}
	defer d.Stop(context.Background())
	if _, err := readAll(ctx, consumer, n, publisher.MetadataID); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// forwarderSetup is watermill's outbox on Postgres: the SQL publisher that applications
// write through, the SQL subscriber the forwarder reads with, and Kafka as its destination.
type forwarderSetup struct {
	db     *sql.DB
	pg     *postgresDB
	sub    *wsql.Subscriber
	level  slog.LevelVar
	logger watermill.LoggerAdapter
}

func newForwarderSetup() (*forwarderSetup, error) {
	pg, err := newPostgres()
	if err != nil {
		return nil, err
	}
	db, err := pgstore.Open(pg.dsn)
	if err != nil {
		pg.drop()
		return nil, err
	}
	s := &forwarderSetup{db: db, pg: pg}
	s.level.Set(slog.LevelWarn)
	s.logger = watermillLogger(&s.level)
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromStdSQL(db), wsql.SubscriberConfig{
		SchemaAdapter:  wsql.DefaultPostgreSQLSchema{},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   10 * time.Millisecond,
	}, s.logger)
	if err != nil {
		s.close()
		return nil, err
	}
	s.sub = sub
	// The tables, created once as an operator would, leaving the adapters' defaults alone.
	if err := sub.SubscribeInitialize(forwarderTopic); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *forwarderSetup) close() {
	s.level.Set(slog.LevelError + 1)
	if s.sub != nil {
		s.sub.Close()
	}
	s.db.Close()
	s.pg.drop()
}

// write publishes msgs through the forwarder's SQL publisher in one transaction.
func (s *forwarderSetup) write(ctx context.Context, msgs ...*message.Message) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	sqlPub, err := wsql.NewPublisher(wsql.TxFromStdSQL(tx), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, s.logger)
	if err != nil {
		tx.Rollback()
		return err
	}
	if err := forwarder.NewPublisher(sqlPub, forwarder.PublisherConfig{}).Publish(topic, msgs...); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// newForwarder connects the forwarder to a Kafka publisher for brokers; run starts it in the
// background and stop closes both.
func (s *forwarderSetup) newForwarder(brokers []string) (run func(context.Context), stop func(), err error) {
	sc := wmkafka.DefaultSaramaSyncPublisherConfig()
	sc.Version = sarama.V3_6_0_0
	sc.Producer.Return.Successes = true
	kpub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
		Brokers: brokers,
		Marshaler: wmkafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
			return msg.Metadata.Get(forwarderKeyHeader), nil
		}),
		OverwriteSaramaConfig: sc,
	}, s.logger)
	if err != nil {
		return nil, nil, err
	}
	fwd, err := forwarder.NewForwarder(s.sub, kpub, s.logger, forwarder.Config{})
	if err != nil {
		kpub.Close()
		return nil, nil, err
	}
	done := make(chan error, 1)
	run = func(ctx context.Context) { go func() { done <- fwd.Run(ctx) }() }
	stop = func() {
		s.level.Set(slog.LevelError + 1)
		fwd.Close()
		select {
		case <-done:
		case <-time.After(time.Minute):
		}
		kpub.Close()
	}
	return run, stop, nil
}

func forwarderMessage(id string, i int) *message.Message {
	msg := message.NewMessage(id, payload256)
	msg.Metadata.Set(forwarderKeyHeader, fmt.Sprintf("key-%d", i%keys))
	return msg
}

// forwarderDrain fills the forwarder's table with n messages, 1000 per transaction like
// fill, then times the forwarder until the consumer has read them all.
func forwarderDrain(n int) (float64, error) {
	s, err := newForwarderSetup()
	if err != nil {
		return 0, err
	}
	defer s.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	for start := 0; start < n; start += 1000 {
		msgs := make([]*message.Message, 0, 1000)
		for i := start; i < min(start+1000, n); i++ {
			msgs = append(msgs, forwarderMessage(store.NewID(), i))
		}
		if err := s.write(ctx, msgs...); err != nil {
			return 0, fmt.Errorf("fill: %w", err)
		}
	}
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return 0, err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return 0, err
	}
	defer consumer.Close()
	run, stop, err := s.newForwarder(brokers)
	if err != nil {
		return 0, err
	}
	defer stop()
	start := time.Now()
	run(ctx)
	if _, err := readAll(ctx, consumer, n, wmkafka.UUIDHeaderKey); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
