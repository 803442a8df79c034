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
	"github.com/eapache/go-resiliency/breaker"

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

// connect creates the producer and its client if no publish has yet. While the brokers cannot
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
	client, producer, err := newProducer(k.brokers, k.conf)
	k.attempts.Add(1)
	if err != nil {
		k.connectErr = fmt.Errorf("outbox: kafka not reachable yet (the next publish tries again): %w", err)
		return k.connectErr
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed { // Close ran meanwhile
		producer.Close()
		client.Close()
		return errClosed
	}
	k.client, k.producer = client, producer
	return nil
}

// newProducer connects to the brokers. The client is kept to look up topics (see
// PublishBatch); closing the producer leaves it open.
func newProducer(brokers []string, conf *sarama.Config) (sarama.Client, sarama.SyncProducer, error) {
	client, err := sarama.NewClient(brokers, conf)
	if err != nil {
		return nil, nil, err
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	return client, producer, nil
}

// Publish implements message.Publisher: it publishes msgs as one batch (see PublishBatch).
func (k *Kafka) Publish(topic string, msgs ...*message.Message) error {
	return k.PublishBatch(topic, msgs)
}

// PublishBatch implements [dispatcher.BatchPublisher]. Messages with the same key go to one
// partition in the order given; after a message that cannot be marshaled or is too large,
// the later messages of its key are not sent. When some messages fail it returns a
// [*dispatcher.BatchError] naming them; errors that retrying cannot fix (a message over the
// broker's size limit, an invalid topic name, a message that cannot be marshaled) are marked
// with [dispatcher.Permanent]. Errors Kafka calls retriable are not, a topic that does not
// exist yet among them: topics are often created just after the deploy that starts writing
// to them.
func (k *Kafka) PublishBatch(topic string, msgs []*message.Message) error {
	if err := k.connect(); err != nil {
		return err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return errClosed
	}
	// Look the topic up once for the batch before the producer does so for each message: a
	// topic that does not exist yet then fails the batch with Kafka's own error, and does not
	// open sarama's circuit breaker (see explain) with three messages of it, which would hold
	// the topic's messages back for 10 s after it is created. The lookup is served from the
	// client's metadata once the topic is known.
	if _, err := k.client.Partitions(topic); err != nil {
		return classify(fmt.Errorf("topic %s: %w", topic, err))
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
				return classify(k.explain(topic, err))
			}
			for _, pe := range perrs {
				id, _ := pe.Msg.Metadata.(string)
				failed[id] = classify(k.explain(topic, pe.Err))
			}
		} else {
			k.explain(topic, nil)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &dispatcher.BatchError{Failed: failed}
}

// explain returns err, adding to sarama's "circuit breaker is open" the error that opened it,
// and remembers the last other error of topic (nil after a success) for that purpose.
//
// Sarama's producer guards each topic and each partition with a breaker that, after 3 failed
// metadata lookups in a row (a topic not created yet, brokers gone), fails every message of
// it at once for 10 s with only "circuit breaker is open". It can be neither turned off nor
// tuned (sarama hard-codes breaker.New(3, 1, 10*time.Second)), and it does no harm in itself:
// the messages fail retryably and the dispatcher retries them after its own backoff. What it
// hides is the cause, which the operator needs; the errors that opened it came back to this
// topic's publishes just before, so the last one is at hand.
func (k *Kafka) explain(topic string, err error) error {
	const breakerPause = "sarama holds a topic or partition back for 10 s after 3 failures in a row"
	k.lastMu.Lock()
	defer k.lastMu.Unlock()
	switch {
	case err == nil:
		delete(k.lastErr, topic)
	case errors.Is(err, breaker.ErrBreakerOpen):
		if last := k.lastErr[topic]; last != nil {
			// %v, not %w: the cause may be a permanent error of another message, while the
			// breaker's own error is transient.
			return fmt.Errorf("%w (%s); the last failure for this topic: %v", err, breakerPause, last)
		}
		return fmt.Errorf("%w (%s)", err, breakerPause)
	default:
		if k.lastErr == nil {
			k.lastErr = map[string]error{}
		}
		k.lastErr[topic] = err
	}
	return err
}

// classify marks the errors that retrying cannot fix: the producer's refusal of a message over
// Producer.MaxMessageBytes (a ConfigurationError), and the broker's errors about the message
// itself that Kafka does not call retriable. Every other error is left to be retried, the
// broker's retriable ones among them (an unknown topic or partition, a leader election, not
// enough replicas; Kafka's RetriableException set, which TestKafkaErrorClasses checks against
// franz-go's table, as sarama exports none) and those of a cluster that is misconfigured
// rather than of a bad message (authorization), which an operator can fix.
func classify(err error) error {
	var tooBig sarama.ConfigurationError
	if errors.As(err, &tooBig) {
		return dispatcher.Permanent(err)
	}
	var code sarama.KError
	if errors.As(err, &code) && permanentKafkaErrors[code] {
		return dispatcher.Permanent(err)
	}
	return err
}

// permanentKafkaErrors are the broker's errors about a message that no retry can fix.
var permanentKafkaErrors = map[sarama.KError]bool{
	sarama.ErrMessageSizeTooLarge: true,
	sarama.ErrInvalidTopic:        true,
	sarama.ErrInvalidRecord:       true,
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
	return errors.Join(k.producer.Close(), k.client.Close())
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
