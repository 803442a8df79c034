package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxgo/outbox/publisher/kafkapub"
	natspub "github.com/outboxgo/outbox/publisher/natspub"
	"github.com/outboxgo/outbox/publisher/redispub"
	"github.com/outboxgo/outbox/store"
)

// broker is where the quickstart's events go: the dispatcher's publisher, a subscriber that
// reads them back as another service would, and the topic.
type broker struct {
	desc  string // for the first line of output
	topic string
	pub   message.Publisher
	sub   message.Subscriber
	close func() // closes pub and sub, and removes what the run made on the broker
}

// brokerFlag is the help of -broker.
const brokerFlag = `where to publish: empty for an in-process Kafka broker; kafka://host:port[,host:port...] for Kafka;
nats://host:port for NATS JetStream (a stream of the run's own); redis://host:port[/db] for Redis Streams;
amqp://user:password@host:port/ for RabbitMQ (a durable queue of the run's own)`

// openBroker connects to the broker that -broker names. Except for the in-process Kafka, the
// run publishes to a topic of its own, removed when it ends, so that runs do not read each
// other's events.
func openBroker(ctx context.Context, spec string, logger *slog.Logger) (*broker, error) {
	if spec == "" {
		return inProcessKafka(logger)
	}
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("-broker %q: want kafka://, nats://, redis:// or amqp:// and a host", spec)
	}
	runTopic := topic + "-" + strings.ToLower(store.NewID()[:8]) + strings.ToLower(store.NewID()[24:])
	switch u.Scheme {
	case "kafka":
		return kafkaBroker(strings.Split(u.Host, ","), "Kafka "+u.Host, topic, logger, func() {})
	case "nats":
		return natsBroker(ctx, spec, runTopic, logger)
	case "redis", "rediss":
		return redisBroker(ctx, spec, runTopic, logger)
	case "amqp", "amqps":
		return amqpBroker(spec, runTopic, logger)
	}
	return nil, fmt.Errorf("-broker %q: unknown scheme %q (kafka, nats, redis or amqp)", spec, u.Scheme)
}

// inProcessKafka starts an in-process Kafka broker, franz-go's kfake, on a free loopback
// port, so that the example needs no services. Topics are created on first use with 8
// partitions.
func inProcessKafka(logger *slog.Logger) (*broker, error) {
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(8),
	)
	if err != nil {
		return nil, fmt.Errorf("start kafka: %w", err)
	}
	addrs := cluster.ListenAddrs()
	return kafkaBroker(addrs, "Kafka "+addrs[0]+" (in-process)", topic, logger, cluster.Close)
}

// kafkaBroker is the Kafka publisher of this module and watermill's Kafka subscriber in a
// consumer group.
func kafkaBroker(brokers []string, desc, topic string, logger *slog.Logger, stop func()) (*broker, error) {
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		stop()
		return nil, fmt.Errorf("kafka publisher: %w", err)
	}
	cfg := wmkafka.DefaultSaramaSubscriberConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers:               brokers,
		Unmarshaler:           kafkapub.Marshaler{},
		OverwriteSaramaConfig: cfg,
		ConsumerGroup:         "quickstart-consumer",
	}, watermill.NewSlogLogger(logger))
	if err != nil {
		pub.Close()
		stop()
		return nil, fmt.Errorf("kafka subscriber: %w", err)
	}
	return &broker{desc: desc, topic: topic, pub: pub, sub: sub, close: func() {
		sub.Close()
		pub.Close()
		stop()
	}}, nil
}

// natsBroker is this module's JetStream publisher, with a stream of the run's own named
// after its topic, and watermill-nats' JetStream subscriber.
func natsBroker(ctx context.Context, spec, topic string, logger *slog.Logger) (*broker, error) {
	nc, err := natsio.Connect(spec)
	if err != nil {
		return nil, fmt.Errorf("nats %s: %w", spec, err)
	}
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: topic, Subjects: []string{topic}})
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats %s: create stream %s (is JetStream on? nats-server -js): %w", spec, topic, err)
	}
	cleanup := func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		js.DeleteStream(dctx, topic)
		nc.Close()
	}
	pub, err := natspub.New(natspub.Config{URL: spec})
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("nats publisher: %w", err)
	}
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:          spec,
		CloseTimeout: 5 * time.Second,
		Unmarshaler:  &wmnats.NATSMarshaler{},
		JetStream: wmnats.JetStreamConfig{
			SubscribeOptions: []natsio.SubOpt{natsio.DeliverAll(), natsio.AckExplicit()},
		},
	}, watermill.NewSlogLogger(logger))
	if err != nil {
		pub.Close()
		cleanup()
		return nil, fmt.Errorf("nats subscriber: %w", err)
	}
	return &broker{desc: "NATS JetStream " + spec + ", stream " + topic, topic: topic, pub: pub, sub: sub, close: func() {
		sub.Close()
		pub.Close()
		cleanup()
	}}, nil
}

// redisBroker is this module's Redis Streams publisher and watermill-redisstream's
// subscriber in a consumer group, on a stream of the run's own.
func redisBroker(ctx context.Context, spec, topic string, logger *slog.Logger) (*broker, error) {
	opts, err := redis.ParseURL(spec)
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", spec, err)
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redis %s: %w", spec, err)
	}
	pub, err := redispub.New(redispub.Config{Client: client})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("redis publisher: %w", err)
	}
	// The subscriber closes its client when it closes: one of its own.
	sub, err := wmredis.NewSubscriber(wmredis.SubscriberConfig{
		Client:                        redis.NewClient(opts),
		ConsumerGroup:                 "quickstart-consumer",
		OldestId:                      "0",
		BlockTime:                     100 * time.Millisecond,
		DisableIndefiniteInitialBlock: true,
	}, quietCancel{watermill.NewSlogLogger(logger)})
	if err != nil {
		pub.Close()
		client.Close()
		return nil, fmt.Errorf("redis subscriber: %w", err)
	}
	return &broker{desc: "Redis Streams " + spec + ", stream " + topic, topic: topic, pub: pub, sub: sub, close: func() {
		sub.Close()
		pub.Close()
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		client.Del(dctx, topic)
		client.Close()
	}}, nil
}

// amqpBroker is watermill-amqp's publisher, with publisher confirms (without them a message
// would be marked delivered that RabbitMQ never stored, and a key's messages could overtake
// each other), and its subscriber, on a durable queue of the run's own.
func amqpBroker(spec, topic string, logger *slog.Logger) (*broker, error) {
	cfg := wmamqp.NewDurableQueueConfig(spec)
	cfg.Publish.ConfirmDelivery = true
	sub, err := wmamqp.NewSubscriber(cfg, watermill.NewSlogLogger(logger))
	if err != nil {
		return nil, fmt.Errorf("amqp %s: %w", redactAMQP(spec), err)
	}
	pub, err := wmamqp.NewPublisher(cfg, watermill.NewSlogLogger(logger))
	if err != nil {
		sub.Close()
		return nil, fmt.Errorf("amqp %s: %w", redactAMQP(spec), err)
	}
	// The subscriber declares the queue when it subscribes, before the first publish: on the
	// default exchange, a message for a queue that does not exist yet is dropped.
	return &broker{desc: "RabbitMQ " + redactAMQP(spec) + ", queue " + topic, topic: topic, pub: pub, sub: sub, close: func() {
		sub.Close()
		if ch, err := pub.Connection().Channel(); err == nil {
			ch.QueueDelete(topic, false, false, false)
			ch.Close()
		}
		pub.Close()
	}}, nil
}

// redactAMQP hides the password of an AMQP URL.
func redactAMQP(spec string) string {
	u, err := url.Parse(spec)
	if err != nil {
		return spec
	}
	return u.Redacted()
}

// quietCancel drops the error watermill-redisstream's subscriber logs when its read is
// cancelled, as it is at every normal stop.
type quietCancel struct{ watermill.LoggerAdapter }

func (q quietCancel) Error(msg string, err error, fields watermill.LogFields) {
	if !errors.Is(err, context.Canceled) {
		q.LoggerAdapter.Error(msg, err, fields)
	}
}

func (q quietCancel) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietCancel{q.LoggerAdapter.With(fields)}
}
