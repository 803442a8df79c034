package kafkapub

import (
	"fmt"

	"github.com/IBM/sarama"
)

// connect creates the producer and its client if no publish has yet. While the brokers cannot
// be reached it returns a retryable error; the publishes that waited behind a failed attempt
// share its error instead of each dialling again in turn.
func (p *Publisher) connect() error {
	p.mu.RLock()
	connected, closed := p.producer != nil, p.closed
	p.mu.RUnlock()
	if closed {
		return errClosed
	}
	if connected {
		return nil
	}
	seen := p.attempts.Load()
	p.connecting.Lock()
	defer p.connecting.Unlock()
	p.mu.RLock()
	connected, closed = p.producer != nil, p.closed
	p.mu.RUnlock()
	if closed {
		return errClosed
	}
	if connected {
		return nil
	}
	if p.attempts.Load() != seen {
		return p.connectErr
	}
	client, producer, err := newProducer(p.brokers, p.conf)
	p.attempts.Add(1)
	if err != nil {
		p.connectErr = fmt.Errorf("outbox: kafka not reachable yet (the next publish tries again): %w", err)
		return p.connectErr
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed { // Close ran meanwhile
		producer.Close()
		client.Close()
		return errClosed
	}
	p.client, p.producer = client, producer
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
