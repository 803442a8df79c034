package kafkapub

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/outboxgo/outbox/publisher"
)

// Sarama exports no classification of the broker's error codes, franz-go does (kerr, Kafka's
// RetriableException set): no error Kafka calls retriable may park a message, and every code
// classify parks must be one Kafka calls final.
func TestKafkaErrorClasses(t *testing.T) {
	for code := range permanentKafkaErrors {
		require.False(t, kerr.IsRetriable(kerr.ErrorForCode(int16(code))), "%v", code)
		require.True(t, publisher.IsPermanent(classify(code)), "%v", code)
	}
	for code := int16(1); code < 200; code++ {
		k := kerr.TypedErrorForCode(code)
		if k == kerr.UnknownServerError || !k.Retriable {
			continue
		}
		require.False(t, publisher.IsPermanent(classify(sarama.KError(code))), "%s is retriable", k.Message)
	}
	for name, tc := range map[string]struct {
		err       error
		permanent bool
	}{
		"unknown topic":        {sarama.ErrUnknownTopicOrPartition, false},
		"leader not available": {sarama.ErrLeaderNotAvailable, false},
		"not leader":           {sarama.ErrNotLeaderForPartition, false},
		"not enough replicas":  {sarama.ErrNotEnoughReplicas, false},
		"out of brokers":       {sarama.ErrOutOfBrokers, false},
		"authorization":        {sarama.ErrTopicAuthorizationFailed, false},
		"too large for broker": {sarama.ErrMessageSizeTooLarge, true},
		"invalid topic":        {sarama.ErrInvalidTopic, true},
		"too large":            {sarama.ConfigurationError("Attempt to produce message larger than configured Producer.MaxMessageBytes"), true},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.permanent, publisher.IsPermanent(classify(tc.err)))
		})
	}
}
