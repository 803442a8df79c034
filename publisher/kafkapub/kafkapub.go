package kafkapub

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher"
)

// Config configures [New].
type Config struct {
	// Brokers to bootstrap from. Required.
	Brokers []string
	// Sarama overrides the producer settings, for TLS, SASL, a client id or another Kafka
	// version. Defaults to [SaramaConfig]; start from it.
	Sarama *sarama.Config
	// Marshaler turns watermill messages into Kafka records. Defaults to [Marshaler],
	// whose records watermill-kafka's subscriber reads.
	Marshaler wmkafka.Marshaler
}

// Kafka's size limits, which the producer's must agree with.
const (
	// brokerMaxMessageBytes is the default of a Kafka broker's message.max.bytes (and so of
	// a topic's max.message.bytes), which bounds a whole record batch as written, kfake's too.
	brokerMaxMessageBytes = 1_048_588
	// recordBatchHeaderBytes is the size of a v2 record batch's header, which the broker
	// counts against message.max.bytes and sarama's Producer.MaxMessageBytes does not.
	recordBatchHeaderBytes = 61
)

// SaramaConfig returns producer settings that do not lose or reorder acknowledged messages:
// acks from all in-sync replicas, the idempotent producer (which needs one open request per
// connection), a bounded number of retries, and successes reported back. Version is Kafka
// 3.6; lower it for older brokers (the idempotent producer needs 0.11).
//
// Producer.MaxMessageBytes is 1,048,527: a broker's default message.max.bytes (1,048,588)
// less the 61-byte header of the record batch that carries the records. Sarama bounds by it
// both a single message and the records it gathers into one batch for a partition, from an
// estimate never below their size as sent, so the producer refuses, before sending, anything
// a broker with default settings would, and never builds a batch such a broker refuses
// whole. A message it refuses is parked at once ([publisher.Permanent]); the store's default
// payload limit, store.DefaultMaxPayloadBytes, leaves room below it for the key, the
// headers and the record's overhead. For a broker or topic with another limit, set
// MaxMessageBytes to that limit less 61.
func SaramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "outbox"
	c.Version = sarama.V3_6_0_0
	c.Producer.MaxMessageBytes = brokerMaxMessageBytes - recordBatchHeaderBytes
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 5
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	return c
}

// Publisher is a watermill publisher that sends all the messages of a call to Kafka at once
// (one produce request per broker and round trip, not one per message) and reports which
// failed. It implements [publisher.BatchPublisher].
//
// It connects on its first publish, not in [New], so that an application can start while
// Kafka is down: until the brokers answer, publishes fail with an error that is not
// [publisher.Permanent], the dispatcher retries them with backoff and holds their keys, and
// each later publish tries to connect again.
type Publisher struct {
	brokers   []string
	conf      *sarama.Config
	marshaler wmkafka.Marshaler
	// The producer's own size check, made before sending so that a message it would refuse
	// holds back the later messages of its key.
	maxBytes, recordVersion int

	// mu is held for reading by each send and for writing by Close, which thereby waits for
	// the sends in progress; it guards client, producer and closed.
	mu       sync.RWMutex
	client   sarama.Client
	producer sarama.SyncProducer
	closed   bool

	// connecting is held while one publish creates the producer; Close never takes it, so a
	// connection attempt that hangs on an unreachable broker does not hold Close up.
	connecting sync.Mutex
	attempts   atomic.Uint64 // connection attempts made; written under connecting
	connectErr error         // the last attempt's error; guarded by connecting

	// The last error of each topic, reported with the circuit breaker's (see explain).
	lastMu  sync.Mutex
	lastErr map[string]error
}

var _ publisher.BatchPublisher = (*Publisher)(nil)

var errClosed = errors.New("outbox: kafka publisher closed")

// New returns a [Publisher] for the brokers. It checks the configuration at once
// but does not connect: the first publish does (see [Publisher]).
func New(cfg Config) (*Publisher, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("outbox: kafkapub.New: no brokers")
	}
	if cfg.Sarama == nil {
		cfg.Sarama = SaramaConfig()
	}
	if cfg.Marshaler == nil {
		cfg.Marshaler = Marshaler{}
	}
	// What sarama.NewSyncProducer checks before it dials, so that a bad configuration fails
	// here and not on every publish.
	if err := cfg.Sarama.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: kafkapub.New: Sarama: %w", err)
	}
	if !cfg.Sarama.Producer.Return.Successes || !cfg.Sarama.Producer.Return.Errors {
		return nil, errors.New("outbox: kafkapub.New: Sarama: Producer.Return.Successes and Producer.Return.Errors must be true")
	}
	p := &Publisher{brokers: slices.Clone(cfg.Brokers), conf: cfg.Sarama, marshaler: cfg.Marshaler,
		maxBytes: cfg.Sarama.Producer.MaxMessageBytes, recordVersion: 1}
	if cfg.Sarama.Version.IsAtLeast(sarama.V0_11_0_0) {
		p.recordVersion = 2
	}
	return p, nil
}

// Publish implements message.Publisher: it publishes msgs as one batch (see PublishBatch).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

// PublishBatch implements [publisher.BatchPublisher]. Messages with the same key go to one
// partition in the order given; after a message that cannot be marshaled or is too large,
// the later messages of its key are not sent. When some messages fail it returns a
// [*publisher.BatchError] naming them; errors that retrying cannot fix (a message over the
// broker's size limit, an invalid topic name, a message that cannot be marshaled) are marked
// with [publisher.Permanent]. Errors Kafka calls retriable are not, a topic that does not
// exist yet among them: topics are often created just after the deploy that starts writing
// to them.
func (p *Publisher) PublishBatch(topic string, msgs []*message.Message) error {
	if err := p.connect(); err != nil {
		return err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	// Look the topic up once for the batch before the producer does so for each message: a
	// topic that does not exist yet then fails the batch with Kafka's own error, and does not
	// open sarama's circuit breaker (see explain) with three messages of it, which would hold
	// the topic's messages back for 10 s after it is created. The lookup is served from the
	// client's metadata once the topic is known.
	if _, err := p.client.Partitions(topic); err != nil {
		return classify(fmt.Errorf("topic %s: %w", topic, err))
	}
	failed := map[string]error{}
	records := make([]*sarama.ProducerMessage, 0, len(msgs))
	var failedKeys map[string]bool
	for _, msg := range msgs {
		key := msg.Metadata.Get(publisher.MetadataKey)
		if key != "" && failedKeys[key] {
			// Sent, it would overtake the message before it.
			failed[msg.UUID] = fmt.Errorf("not sent: an earlier message of key %q failed", key)
			continue
		}
		rec, err := p.marshaler.Marshal(topic, msg)
		if err != nil {
			err = fmt.Errorf("marshal message %s: %w", msg.UUID, err)
		} else if size := rec.ByteSize(p.recordVersion); size > p.maxBytes {
			err = fmt.Errorf("message %s is larger than Producer.MaxMessageBytes: %d > %d", msg.UUID, size, p.maxBytes)
		}
		if err != nil {
			failed[msg.UUID] = publisher.Permanent(err)
			if key != "" {
				if failedKeys == nil {
					failedKeys = map[string]bool{}
				}
				failedKeys[key] = true
			}
			continue
		}
		rec.Metadata = msg.UUID
		records = append(records, rec)
	}
	if len(records) > 0 {
		if err := p.producer.SendMessages(records); err != nil {
			var perrs sarama.ProducerErrors
			if !errors.As(err, &perrs) {
				return classify(p.explain(topic, err))
			}
			for _, pe := range perrs {
				id, _ := pe.Msg.Metadata.(string)
				failed[id] = classify(p.explain(topic, pe.Err))
			}
		} else {
			p.explain(topic, nil)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &publisher.BatchError{Failed: failed}
}

// Close implements message.Publisher; it waits for the sends in progress but not for a
// connection attempt, which closes what it opened when it ends.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.producer == nil {
		return nil
	}
	return errors.Join(p.producer.Close(), p.client.Close())
}
