package kafkapub

import (
	"errors"
	"fmt"

	"github.com/IBM/sarama"
	"github.com/eapache/go-resiliency/breaker"

	"github.com/outboxgo/outbox/publisher"
)

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
func (p *Publisher) explain(topic string, err error) error {
	const breakerPause = "sarama holds a topic or partition back for 10 s after 3 failures in a row"
	p.lastMu.Lock()
	defer p.lastMu.Unlock()
	switch {
	case err == nil:
		delete(p.lastErr, topic)
	case errors.Is(err, breaker.ErrBreakerOpen):
		if last := p.lastErr[topic]; last != nil {
			// %v, not %w: the cause may be a permanent error of another message, while the
			// breaker's own error is transient.
			return fmt.Errorf("%w (%s); the last failure for this topic: %v", err, breakerPause, last)
		}
		return fmt.Errorf("%w (%s)", err, breakerPause)
	default:
		if p.lastErr == nil {
			p.lastErr = map[string]error{}
		}
		p.lastErr[topic] = err
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
		return publisher.Permanent(err)
	}
	var code sarama.KError
	if errors.As(err, &code) && permanentKafkaErrors[code] {
		return publisher.Permanent(err)
	}
	return err
}

// permanentKafkaErrors are the broker's errors about a message that no retry can fix.
var permanentKafkaErrors = map[sarama.KError]bool{
	sarama.ErrMessageSizeTooLarge: true,
	sarama.ErrInvalidTopic:        true,
	sarama.ErrInvalidRecord:       true,
}
