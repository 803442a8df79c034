package publisher

import (
	"errors"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/dispatcher"
)

// KafkaConfig configures [NewKafka].
type KafkaConfig struct {
	// Brokers to bootstrap from. Required.
	Brokers []string
	// Sarama overrides the producer settings. Defaults to [SaramaConfig]; start from it when
	// you need TLS, SASL or another client id.
	Sarama *sarama.Config
	// Logger receives watermill-kafka's logs. Defaults to none.
	Logger watermill.LoggerAdapter
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

// NewKafka returns a watermill-kafka publisher with [SaramaConfig] and [KafkaMarshaler].
func NewKafka(cfg KafkaConfig) (*kafka.Publisher, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("outbox: publisher.NewKafka: no brokers")
	}
	if cfg.Sarama == nil {
		cfg.Sarama = SaramaConfig()
	}
	return kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               cfg.Brokers,
		Marshaler:             KafkaMarshaler{},
		OverwriteSaramaConfig: cfg.Sarama,
	}, cfg.Logger)
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
