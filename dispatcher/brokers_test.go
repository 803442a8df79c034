package dispatcher_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// The dispatcher against real watermill publishers, read back with each broker's own subscriber.

const brokerMessages, brokerKeys = 1000, 50

func TestGoChannelEndToEnd(t *testing.T) {
	f := setup(t)
	// GoChannel hands each message to a goroutine by default, so neither delivery nor order
	// would be known when Publish returns; blocking until the subscriber acks gives both.
	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	t.Cleanup(func() { require.NoError(t, pubsub.Close()) })
	topic := "payments"
	// GoChannel drops messages of a topic nobody subscribes to: subscribe first.
	msgs, err := pubsub.Subscribe(f.ctx, topic)
	require.NoError(t, err)
	requireEndToEnd(t, f, pubsub, topic, msgs)
}

func TestRabbitMQEndToEnd(t *testing.T) {
	f := setup(t)
	cfg := amqp.NewDurableQueueConfig(amqpURI())
	// Without confirms Publish returns once the frame is written: a message could be marked
	// delivered that the broker never stored, and RabbitMQ keeps order only within a channel,
	// while the publisher opens one per Publish.
	cfg.Publish.ConfirmDelivery = true
	sub, err := amqp.NewSubscriber(cfg, watermill.NopLogger{})
	if err != nil {
		amqpUnavailable(t, err)
	}
	pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
	require.NoError(t, err)
	// One durable queue per run, so a rerun never reads an earlier run's messages.
	topic := "outbox-test-" + store.NewID()
	t.Cleanup(func() { // after the dispatcher stopped (cleanups run in reverse)
		require.NoError(t, sub.Close())
		ch, err := pub.Connection().Channel()
		require.NoError(t, err)
		_, err = ch.QueueDelete(topic, false, false, false)
		require.NoError(t, err)
		require.NoError(t, ch.Close())
		require.NoError(t, pub.Close())
	})
	// Subscribe declares the queue; on the default exchange a message for a queue that does not
	// exist yet is dropped. One consumer on one queue sees the queue's order.
	msgs, err := sub.Subscribe(f.ctx, topic)
	require.NoError(t, err)
	requireEndToEnd(t, f, pub, topic, msgs)
}

// requireEndToEnd writes brokerMessages messages over brokerKeys keys (payload = write index)
// while a dispatcher publishes them through pub, reads them all from msgs and checks identity,
// headers, order per key and that the outbox marked them delivered.
func requireEndToEnd(t *testing.T, f *fixture, pub message.Publisher, topic string, msgs <-chan *message.Message) {
	t.Helper()
	d := f.start(t, pub, fast(dispatcher.Config{}))

	// Written in several transactions while the dispatcher runs, so wake-ups and backlog both
	// take part.
	var ids []string
	for batch := 0; batch < brokerMessages; batch += 100 {
		var in []store.Message
		for i := batch; i < batch+100; i++ {
			in = append(in, store.Message{Topic: topic, Key: brokerKey(i), Payload: []byte(strconv.Itoa(i)),
				Headers: map[string]string{"content-type": "text/plain", "seq": strconv.Itoa(i)}})
		}
		ids = append(ids, f.write(t, in...)...)
	}

	got := consume(t, f.ctx, msgs, brokerMessages)
	require.Len(t, got, brokerMessages, "every message arrives once")
	for _, m := range got {
		i, err := strconv.Atoi(string(m.Payload))
		require.NoError(t, err)
		require.Equal(t, ids[i], m.UUID, "message %d: the UUID is the outbox id", i)
		require.Equal(t, m.UUID, m.Metadata.Get(publisher.MetadataID))
		require.Equal(t, brokerKey(i), m.Metadata.Get(publisher.MetadataKey))
		require.Equal(t, "text/plain", m.Metadata.Get("content-type"))
		require.Equal(t, strconv.Itoa(i), m.Metadata.Get("seq"))
		_, err = time.Parse(time.RFC3339Nano, m.Metadata.Get(publisher.MetadataCreatedAt))
		require.NoError(t, err)
	}
	requireOrderPerKey(t, got)
	f.waitDelivered(t, brokerMessages)
	require.Equal(t, int64(brokerMessages), d.Stats().Published)
	require.Zero(t, d.Stats().Parked)
}

func brokerKey(i int) string { return fmt.Sprintf("k%d", i%brokerKeys) }

// consume acks and returns the messages read from msgs in arrival order until n distinct
// UUIDs arrived; a duplicate fails the test, as no dispatcher crashed.
func consume(t *testing.T, ctx context.Context, msgs <-chan *message.Message, n int) []*message.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	seen := map[string]bool{}
	var got []*message.Message
	for len(got) < n {
		select {
		case m, ok := <-msgs:
			require.True(t, ok, "subscription closed after %d of %d messages", len(got), n)
			m.Ack()
			require.False(t, seen[m.UUID], "duplicate %s", m.UUID)
			seen[m.UUID] = true
			got = append(got, m)
		case <-ctx.Done():
			require.FailNow(t, "not every message arrived", "%d of %d: %v", len(got), n, ctx.Err())
		}
	}
	return got
}

// amqpURI is the RabbitMQ server for tests; make test starts it with .ci/services.
func amqpURI() string {
	if v := os.Getenv("OUTBOX_TEST_AMQP"); v != "" {
		return v
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// amqpUnavailable skips the test, or fails it under CI, where every server must be there.
func amqpUnavailable(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("RabbitMQ is not reachable under CI (make test starts it with .ci/services): %v", err)
	}
	t.Skipf("RabbitMQ is not reachable; skipping (make test starts it with .ci/services): %v", err)
}
