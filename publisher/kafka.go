package publisher

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/dispatcher"
)

// KafkaConfig configures [NewKafka].
type KafkaConfig struct {
	// Brokers to bootstrap from. Required.
	Brokers []string
	// Sarama overrides the producer settings, for TLS, SASL, a client id or another Kafka
	// version. Defaults to [SaramaConfig]; start from it.
	Sarama *sarama.Config
	// Marshaler turns watermill messages into Kafka records. Defaults to [KafkaMarshaler],
	// whose records watermill-kafka's subscriber reads.
	Marshaler kafka.Marshaler
}

// SaramaConfig returns producer settings that do not lose or reorder acknowledged messages:
// acks from all in-sync replicas, the idempotent producer (which needs one open request per
// connection), a bounded number of retries, and successes reported back. Version is Kafka
// 3.6; lower it for older brokers (the idempotent producer needs 0.11).
func SaramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "outbox"
	c.Version = sarama.V3_6_0_0
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

// Kafka is a watermill publisher that sends all the messages of a call to Kafka at once (one
// produce request per broker and round trip, not one per message) and reports which failed.
// It implements [dispatcher.BatchPublisher].
//
// It connects on its first publish, not in [NewKafka], so that an application can start while
// Kafka is down: until the brokers answer, publishes fail with an error that is not
// [dispatcher.Permanent], the dispatcher retries them with backoff and holds their keys, and
// each later publish tries to connect again.
type Kafka struct {
	brokers   []string
	conf      *sarama.Config
	marshaler kafka.Marshaler
	// The producer's own size check, made before sending so that a message it would refuse
	// holds back the later messages of its key.
	maxBytes, recordVersion int

	// mu is held for reading by each send and for writing by Close, which thereby waits for
	// the sends in progress; it guards producer and closed.
	mu       sync.RWMutex
	producer sarama.SyncProducer
	closed   bool

	// connecting is held while one publish creates the producer; Close never takes it, so a
	// connection attempt that hangs on an unreachable broker does not hold Close up.
	connecting sync.Mutex
	attempts   atomic.Uint64 // connection attempts made; written under connecting
	connectErr error         // the last attempt's error; guarded by connecting
}

var _ dispatcher.BatchPublisher = (*Kafka)(nil)

var errClosed = errors.New("outbox: kafka publisher closed")

// NewKafka returns a [Kafka] publisher for the brokers. It checks the configuration at once
// but does not connect: the first publish does (see [Kafka]).
func NewKafka(cfg KafkaConfig) (*Kafka, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("outbox: publisher.NewKafka: no brokers")
	}
	if cfg.Sarama == nil {
		cfg.Sarama = SaramaConfig()
	}
	if cfg.Marshaler == nil {
		cfg.Marshaler = KafkaMarshaler{}
	}
	// What sarama.NewSyncProducer checks before it dials, so that a bad configuration fails
	// here and not on every publish.
	if err := cfg.Sarama.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: publisher.NewKafka: Sarama: %w", err)
	}
	if !cfg.Sarama.Producer.Return.Successes || !cfg.Sarama.Producer.Return.Errors {
		return nil, errors.New("outbox: publisher.NewKafka: Sarama: Producer.Return.Successes and Producer.Return.Errors must be true")
	}
	k := &Kafka{brokers: slices.Clone(cfg.Brokers), conf: cfg.Sarama, marshaler: cfg.Marshaler,
		maxBytes: cfg.Sarama.Producer.MaxMessageBytes, recordVersion: 1}
	if cfg.Sarama.Version.IsAtLeast(sarama.V0_11_0_0) {
		k.recordVersion = 2
	}
	return k, nil
}

// connect creates the producer if no publish has yet. While the brokers cannot
// be reached it returns a retryable error; the publishes that waited behind a failed attempt
// share its error instead of each dialling again in turn.
func (k *Kafka) connect() error {
	k.mu.RLock()
	connected, closed := k.producer != nil, k.closed
	k.mu.RUnlock()
	if closed {
		return errClosed
	}
	if connected {
		return nil
	}
	seen := k.attempts.Load()
	k.connecting.Lock()
	defer k.connecting.Unlock()
	k.mu.RLock()
	connected, closed = k.producer != nil, k.closed
	k.mu.RUnlock()
	if closed {
		return errClosed
	}
	if connected {
		return nil
	}
	if k.attempts.Load() != seen {
		return k.connectErr
	}
	producer, err := sarama.NewSyncProducer(k.brokers, k.conf)
	k.attempts.Add(1)
	if err != nil {
		k.connectErr = fmt.Errorf("outbox: kafka not reachable yet (the next publish tries again): %w", err)
		return k.connectErr
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed { // Close ran meanwhile
		producer.Close()
		return errClosed
	}
	k.producer = producer
	return nil
}

// Publish implements message.Publisher: it publishes msgs as one batch (see PublishBatch).
func (k *Kafka) Publish(topic string, msgs ...*message.Message) error {
	return k.PublishBatch(topic, msgs)
}

// PublishBatch implements [dispatcher.BatchPublisher]. Messages with the same key go to one
// partition in the order given; after a message that cannot be marshaled or is too large,
// the later messages of its key are not sent. When some messages fail it returns a
// [*dispatcher.BatchError] naming them; errors that retrying cannot fix (a message over the
// broker's size limit, an unknown or invalid topic, a message that cannot be marshaled) are
// marked with [dispatcher.Permanent].
func (k *Kafka) PublishBatch(topic string, msgs []*message.Message) error {
	if err := k.connect(); err != nil {
		return err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return errClosed
	}
	failed := map[string]error{}
	records := make([]*sarama.ProducerMessage, 0, len(msgs))
	var failedKeys map[string]bool
	for _, msg := range msgs {
		key := msg.Metadata.Get(dispatcher.MetadataKey)
		if key != "" && failedKeys[key] {
			// Sent, it would overtake the message before it.
			failed[msg.UUID] = fmt.Errorf("not sent: an earlier message of key %q failed", key)
			continue
		}
		rec, err := k.marshaler.Marshal(topic, msg)
		if err != nil {
			err = fmt.Errorf("marshal message %s: %w", msg.UUID, err)
		} else if size := rec.ByteSize(k.recordVersion); size > k.maxBytes {
			err = fmt.Errorf("message %s is larger than Producer.MaxMessageBytes: %d > %d", msg.UUID, size, k.maxBytes)
		}
		if err != nil {
			failed[msg.UUID] = dispatcher.Permanent(err)
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
		if err := k.producer.SendMessages(records); err != nil {
			var perrs sarama.ProducerErrors
			if !errors.As(err, &perrs) {
				return classify(err)
			}
			for _, pe := range perrs {
				id, _ := pe.Msg.Metadata.(string)
				failed[id] = classify(pe.Err)
			}
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &dispatcher.BatchError{Failed: failed}
}

// classify marks the errors that retrying cannot fix: the broker's, and the producer's
// refusal of a message over Producer.MaxMessageBytes (a ConfigurationError).
func classify(err error) error {
	var tooBig sarama.ConfigurationError
	if errors.As(err, &tooBig) {
		return dispatcher.Permanent(err)
	}
	for _, permanent := range []error{
		sarama.ErrMessageSizeTooLarge, sarama.ErrInvalidTopic, sarama.ErrUnknownTopicOrPartition, sarama.ErrInvalidRecord,
	} {
		if errors.Is(err, permanent) {
			return dispatcher.Permanent(err)
		}
	}
	return err
}

// Close implements message.Publisher; it waits for the sends in progress but not for a
// connection attempt, which closes what it opened when it ends.
func (k *Kafka) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if k.producer == nil {
		return nil
	}
	return k.producer.Close()
}

// KafkaMarshaler is watermill-kafka's default marshaler plus the record key: the outbox
// message key (metadata [dispatcher.MetadataKey]) when it has one, and no key otherwise, so
// that keyless messages spread over partitions.
type KafkaMarshaler struct {
	kafka.DefaultMarshaler
}

var _ kafka.MarshalerUnmarshaler = KafkaMarshaler{}

// Marshal implements kafka.Marshaler.
func (m KafkaMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	pm, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	if key := msg.Metadata.Get(dispatcher.MetadataKey); key != "" {
		pm.Key = sarama.StringEncoder(key)
	}
	return pm, nil
}
