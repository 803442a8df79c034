package dispatcher_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	natspub "github.com/outboxgo/outbox/publisher/natspub"
)

// NATS JetStream keeps each key's order with one stream per topic, in the order the server
// receives the messages: the dispatcher publishes a key's messages in write order, and one
// consumer of the stream reads them back in it.

// natsURL is the NATS server (with JetStream) for tests; make test starts it with
// .ci/services. Where it cannot be reached the test is skipped, except under CI.
func natsURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("OUTBOX_TEST_NATS")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	nc, err := natsio.Connect(url)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NATS is not reachable under CI (make test starts it with .ci/services): %v", err)
		}
		t.Skipf("NATS is not reachable; skipping (make test starts it with .ci/services): %v", err)
	}
	nc.Close()
	return url
}

// natsStream creates a stream of the test's own on the server at url, whose name is also its
// only subject, and deletes it when the test ends; it returns the name, the topic to publish to.
func natsStream(t *testing.T, url string) string {
	t.Helper()
	nc, err := natsio.Connect(url)
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	name := "outbox_test_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name}})
	require.NoError(t, err, "is JetStream on (nats-server -js)?")
	t.Cleanup(func() {
		js.DeleteStream(context.Background(), name)
		nc.Close()
	})
	return name
}

// natsSubscriber is watermill-nats' JetStream subscriber, reading a stream from its start
// through an ephemeral consumer, one message at a time.
func natsSubscriber(t *testing.T, url string) message.Subscriber {
	t.Helper()
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:              url,
		CloseTimeout:     5 * time.Second,
		AckWaitTimeout:   30 * time.Second,
		SubscribersCount: 1,
		Unmarshaler:      &wmnats.NATSMarshaler{},
		JetStream: wmnats.JetStreamConfig{
			SubscribeOptions: []natsio.SubOpt{natsio.DeliverAll(), natsio.AckExplicit()},
		},
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { sub.Close() })
	return sub
}

// readNATSStream reads every message of a stream, in stream order, with an independent client.
func readNATSStream(t *testing.T, url, stream string) []*message.Message {
	t.Helper()
	nc, err := natsio.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	total := int(s.CachedInfo().State.Msgs)
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	var out []*message.Message
	for len(out) < total {
		batch, err := c.Fetch(min(500, total-len(out)), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		for m := range batch.Messages() {
			wm, err := (&wmnats.NATSMarshaler{}).Unmarshal(&natsio.Msg{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
			require.NoError(t, err)
			out = append(out, wm)
		}
		require.NoError(t, batch.Error())
		require.NoError(t, ctx.Err(), "read %d of %d", len(out), total)
	}
	return out
}

// watermill-nats' own publisher, JetStream with a publish acknowledgement per message
// (js.PublishMsg), without Nats-Msg-Id: the copies published again after a lost
// acknowledgement reach the consumer, whose idempotency middleware drops them.
func TestNATSEndToEnd(t *testing.T) {
	f := setup(t)
	url := natsURL(t)
	topic := natsStream(t, url)
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL: url,
		// Nothing published while reconnecting is sent after what the old connection lost.
		NatsOptions: []natsio.Option{natsio.ReconnectBufSize(-1)},
		Marshaler:   &wmnats.NATSMarshaler{},
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() }) // after the dispatcher stopped (cleanups run in reverse)
	res := requireEndToEndThroughInbox(t, f, pub, topic, natsSubscriber(t, url))
	require.Greater(t, res.deliveries, brokerMessages, "the copies published again were read, and dropped by the inbox")
}

// publisher/natspub: batches with pipelined acknowledgements, and Nats-Msg-Id, so that the
// stream itself drops the copies published again within its duplicate window.
func TestNATSBatchEndToEnd(t *testing.T) {
	f := setup(t)
	url := natsURL(t)
	topic := natsStream(t, url)
	pub, err := natspub.New(natspub.Config{URL: url})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	res := requireEndToEndThroughInbox(t, f, pub, topic, natsSubscriber(t, url))
	require.Equal(t, brokerMessages, res.deliveries, "the stream dropped the copies published again (Nats-Msg-Id)")
	require.Len(t, readNATSStream(t, url, topic), brokerMessages)
}

// A NATS server of the test's own (JetStream, files in a directory of its own) is stopped
// for 10 s while the application writes, then started again on its files.
func TestNATSOutageLosesNothingAndResumes(t *testing.T) {
	server := startPrivateBroker(t, "nats-server", func(port int, dir string) []string {
		return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir}
	})
	url := "nats://" + server.addr()
	requireOutageLosesNothing(t, outageBroker{
		server: server,
		publisher: func(t *testing.T) message.Publisher {
			pub, err := natspub.New(natspub.Config{URL: url, AutoProvision: true, AckTimeout: 2 * time.Second,
				Options: []natsio.Option{natsio.ReconnectWait(100 * time.Millisecond)}})
			require.NoError(t, err)
			t.Cleanup(func() { pub.Close() })
			return pub
		},
		readAll: func(t *testing.T) []*message.Message { return readNATSStream(t, url, instanceTopic) },
	})
}
