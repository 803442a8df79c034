package kafkapub_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// The size limits agree, each with its neighbour: what Write accepts by default the producer
// sends, and what the producer sends a broker with default settings (kfake's are Kafka's:
// message.max.bytes 1,048,588 for a record batch) takes.

// payloadOf returns n bytes that a reader can tell were not cut short.
func payloadOf(n int) []byte {
	b := bytes.Repeat([]byte("x"), n)
	b[0], b[n-1] = '<', '>'
	return b
}

// The largest payload Write accepts, with the most metadata the dispatcher adds (an id and a
// key as long as Write allows, a creation time, a trace context) and ordinary headers, is
// delivered; so are several of them in one call for one partition, which the producer must
// send in batches the broker takes.
func TestKafkaDeliversTheLargestPayloadWriteAccepts(t *testing.T) {
	t.Parallel()
	cluster := newCluster(t)
	pub := newKafka(t, cluster.ListenAddrs())
	key := strings.Repeat("k", store.MaxKeyLen)
	largest := func(i int) *message.Message {
		id := strings.Repeat(string(rune('a'+i)), store.MaxIDLen)
		m := message.NewMessage(id, payloadOf(store.DefaultMaxPayloadBytes))
		m.Metadata.Set(publisher.MetadataID, id)
		m.Metadata.Set(publisher.MetadataKey, key)
		m.Metadata.Set(publisher.MetadataCreatedAt, "2026-11-30T09:11:12.123456789+01:00")
		m.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		m.Metadata.Set("event_type", "PaymentCompleted")
		m.Metadata.Set("content_type", "application/json")
		return m
	}

	require.NoError(t, pub.PublishBatch("one", []*message.Message{largest(0)}))
	require.NoError(t, pub.PublishBatch("three", []*message.Message{largest(0), largest(1), largest(2)}))

	for topic, n := range map[string]int{"one": 1, "three": 3} {
		consumer, err := kafkatest.NewConsumer(cluster.ListenAddrs(), topic)
		require.NoError(t, err)
		recs, err := consumer.ReadN(ctxWithTimeout(t, 30*time.Second), n)
		consumer.Close()
		require.NoError(t, err)
		require.Len(t, recs, n)
		for i, r := range recs {
			require.Equal(t, payloadOf(store.DefaultMaxPayloadBytes), r.Value, "%s: whole", topic)
			require.Equal(t, key, r.Key)
			require.Equal(t, strings.Repeat(string(rune('a'+i)), store.MaxIDLen), r.Headers[publisher.MetadataID], "%s: in order", topic)
		}
	}
}

// valueOnly marshals a message into a record of its payload alone, no key and no headers,
// so that the record's size is set to the byte.
type valueOnly struct{}

func (valueOnly) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	return &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(msg.Payload)}, nil
}

// The producer's limit is the broker's: the largest record it lets through, a broker with
// default settings takes (with the old limit, sarama's default of 1 MiB, kfake refused it:
// the broker counts the record batch's 61-byte header, sarama does not); one byte more is
// refused before it is sent, as permanent.
func TestKafkaProducerLimitIsTheBrokers(t *testing.T) {
	t.Parallel()
	cluster := newCluster(t)
	pub, err := kafkapub.New(kafkapub.Config{Brokers: cluster.ListenAddrs(), Marshaler: valueOnly{}})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	// Sarama's estimate of a record with no key and no headers: its value and 36 bytes.
	largest := kafkapub.SaramaConfig().Producer.MaxMessageBytes - 36

	require.NoError(t, pub.PublishBatch("limit", []*message.Message{message.NewMessage("largest", payloadOf(largest))}))
	consumer, err := kafkatest.NewConsumer(cluster.ListenAddrs(), "limit")
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, 30*time.Second), 1)
	require.NoError(t, err)
	require.Len(t, recs[0].Value, largest)

	err = failureFor(pub.PublishBatch("limit", []*message.Message{message.NewMessage("over", payloadOf(largest+1))}), "over")
	require.True(t, publisher.IsPermanent(err), "%v", err)
	require.ErrorContains(t, err, "larger than Producer.MaxMessageBytes", "refused by the producer, not the broker")
}

// End to end on SQLite: the largest payload Write accepts by default, with a key and ordinary
// headers, is delivered through the dispatcher and the Kafka publisher with their default
// settings; one byte more is refused by Write, and the transaction stays usable.
func TestDispatcherDeliversTheLargestPayloadWriteAccepts(t *testing.T) {
	t.Parallel()
	ctx := ctxWithTimeout(t, 2*time.Minute)
	cluster := newCluster(t)
	brokers := cluster.ListenAddrs()

	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))

	msg := store.Message{ID: store.NewID(), Topic: "payments", Key: "payment-42",
		Payload: payloadOf(store.DefaultMaxPayloadBytes),
		Headers: map[string]string{"event_type": "PaymentCompleted", "content_type": "application/json"}}
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	over := msg
	over.ID, over.Payload = store.NewID(), payloadOf(store.DefaultMaxPayloadBytes+1)
	err = st.Write(ctx, tx, over)
	require.ErrorIs(t, err, store.ErrPayloadTooLarge)
	require.EqualError(t, err, "message 0: outbox: message payload too large: payload is 1000001 bytes, the limit is 1000000")
	require.NoError(t, st.Write(ctx, tx, msg), "the transaction is still usable")
	require.NoError(t, tx.Commit())

	pub := newKafka(t, brokers)
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })

	consumer, err := kafkatest.NewConsumer(brokers, "payments")
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, time.Minute), 1)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, msg.ID, recs[0].Headers[publisher.MetadataID])
	require.Equal(t, msg.Payload, recs[0].Value)
	require.Equal(t, "payment-42", recs[0].Key)
	require.Eventually(t, func() bool {
		res, err := st.List(ctx, &store.ListParams{State: store.Delivered})
		return err == nil && len(res.Messages) == 1
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, dispatcher.Stats{Published: 1}, d.Stats(), "no failed attempt, nothing parked")
}
