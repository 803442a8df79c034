package kafkapub

import (
	"github.com/IBM/sarama"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher"
)

// Marshaler is watermill-kafka's default marshaler plus the record key: the outbox message
// key (metadata [publisher.MetadataKey]) when it has one, and no key otherwise, so that
// keyless messages spread over partitions. It unmarshals as watermill-kafka's does, so
// watermill's Kafka subscriber takes it as its Unmarshaler.
type Marshaler struct {
	wmkafka.DefaultMarshaler
}

var _ wmkafka.MarshalerUnmarshaler = Marshaler{}

// Marshal implements watermill-kafka's Marshaler.
func (m Marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	pm, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	if key := msg.Metadata.Get(publisher.MetadataKey); key != "" {
		pm.Key = sarama.StringEncoder(key)
	}
	return pm, nil
}
