// Package outboxtest helps applications test the code that writes outbox messages, on SQLite
// or any other store, without brokers, goroutines or sleeps.
//
//	tx, _ := db.BeginTx(ctx, nil)
//	err := payments.Complete(ctx, tx, outbox, paymentID) // writes rows and a message
//	outboxtest.RequireWritten(t, outbox, tx, outboxtest.Want{Topic: "payments", Key: paymentID})
//	tx.Commit()
//
//	pub := outboxtest.NewPublisher()
//	outboxtest.Drain(t, outbox, pub)
//	require.Len(t, pub.Messages("payments"), 1)
package outboxtest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

// Publisher is an in-memory watermill publisher that records the messages it is given, in
// order. It is for tests: nothing is sent anywhere. It is safe for concurrent use.
type Publisher struct {
	// Fail, when set, is called before a message is recorded; a non-nil error fails that
	// publish and the message is not recorded. Use it to test retries and parking.
	Fail func(topic string, msg *message.Message) error

	mu     sync.Mutex
	topics []string
	msgs   []*message.Message
	closed bool
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns an empty Publisher.
func NewPublisher() *Publisher { return &Publisher{} }

// Publish implements message.Publisher.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if p.Fail != nil {
			if err := p.Fail(topic, m); err != nil {
				return err
			}
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return fmt.Errorf("outboxtest: publisher closed")
		}
		p.topics = append(p.topics, topic)
		p.msgs = append(p.msgs, m)
		p.mu.Unlock()
	}
	return nil
}

// Close implements message.Publisher. Later publishes fail.
func (p *Publisher) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return nil
}

// Messages returns the messages published to topic, in publish order; all of them when topic
// is empty.
func (p *Publisher) Messages(topic string) []*message.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*message.Message
	for i, m := range p.msgs {
		if topic == "" || p.topics[i] == topic {
			out = append(out, m)
		}
	}
	return out
}

// Reset forgets the recorded messages.
func (p *Publisher) Reset() {
	p.mu.Lock()
	p.topics, p.msgs = nil, nil
	p.mu.Unlock()
}

// Want describes an expected message. Zero fields match anything; Headers must all be present
// with these values.
type Want struct {
	Topic   string
	Key     string
	Payload []byte
	Headers map[string]string
	// State defaults to store.Pending.
	State store.State
}

func (w Want) matches(m store.StoredMessage) bool {
	if (w.Topic != "" && m.Topic != w.Topic) || (w.Key != "" && m.Key != w.Key) ||
		(w.Payload != nil && !bytes.Equal(w.Payload, m.Payload)) {
		return false
	}
	for k, v := range w.Headers {
		if got, ok := m.Headers[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// RequireWritten fails the test unless st holds exactly one message that matches want, and
// returns it. db is what to read through: pass the transaction under test to see what it wrote
// before it commits, or nil for committed messages.
func RequireWritten(t testing.TB, st store.Outbox, db store.Querier, want Want) store.StoredMessage {
	t.Helper()
	found := find(t, st, db, want)
	if len(found) != 1 {
		t.Fatalf("outboxtest: want exactly 1 %s message matching %s, found %d", stateOf(want), describe(want), len(found))
		return store.StoredMessage{}
	}
	return found[0]
}

// RequireNotWritten fails the test if st holds a message that matches want.
func RequireNotWritten(t testing.TB, st store.Outbox, db store.Querier, want Want) {
	t.Helper()
	if found := find(t, st, db, want); len(found) > 0 {
		t.Fatalf("outboxtest: want no %s message matching %s, found %d (first: id %s)", stateOf(want), describe(want), len(found), found[0].ID)
	}
}

func stateOf(w Want) store.State {
	if w.State == "" {
		return store.Pending
	}
	return w.State
}

func find(t testing.TB, st store.Outbox, db store.Querier, want Want) []store.StoredMessage {
	t.Helper()
	res, err := store.EngineOf(st).List(context.Background(), &store.ListParams{DB: db, State: stateOf(want), Topic: want.Topic, Key: want.Key, Limit: 10000})
	if err != nil {
		t.Fatalf("outboxtest: list messages: %v", err)
		return nil
	}
	var found []store.StoredMessage
	for _, m := range res.Messages {
		if want.matches(m) {
			found = append(found, m)
		}
	}
	return found
}

func describe(w Want) string {
	var parts []string
	if w.Topic != "" {
		parts = append(parts, fmt.Sprintf("topic=%q", w.Topic))
	}
	if w.Key != "" {
		parts = append(parts, fmt.Sprintf("key=%q", w.Key))
	}
	if w.Payload != nil {
		parts = append(parts, fmt.Sprintf("payload=%q", w.Payload))
	}
	if len(w.Headers) > 0 {
		parts = append(parts, fmt.Sprintf("headers=%v", w.Headers))
	}
	if len(parts) == 0 {
		return "anything"
	}
	return strings.Join(parts, " ")
}

// Drain publishes every due message of st to pub synchronously, as a dispatcher with default
// settings would, marks them delivered, and returns how many were published. It fails the test
// on a store error. Messages whose publish fails are recorded as failed attempts, not retried.
func Drain(t testing.TB, st store.Outbox, pub message.Publisher) int {
	t.Helper()
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: discardLogger()})
	if err != nil {
		t.Fatalf("outboxtest: %v", err)
		return 0
	}
	n, err := d.Drain(context.Background())
	if err != nil {
		t.Fatalf("outboxtest: drain: %v", err)
	}
	return n
}
