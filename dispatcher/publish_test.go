package dispatcher_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// batchPublisher publishes a batch in one call and reports per-message failures, as the Kafka
// publisher does.
type batchPublisher struct {
	*outboxtest.Publisher
	calls atomic.Int32
}

func (b *batchPublisher) PublishBatch(topic string, msgs []*message.Message) error {
	b.calls.Add(1)
	failed := map[string]error{}
	failedKeys := map[string]bool{}
	for _, m := range msgs {
		key := m.Metadata.Get(publisher.MetadataKey)
		if key != "" && failedKeys[key] {
			failed[m.UUID] = errors.New("not sent: an earlier message of its key failed")
			continue
		}
		if err := b.Publisher.Publish(topic, m); err != nil {
			failed[m.UUID] = err
			failedKeys[key] = key != ""
		}
	}
	if len(failed) > 0 {
		return &publisher.BatchError{Failed: failed}
	}
	return nil
}

func TestBatchPublisherGetsOneCallPerTopic(t *testing.T) {
	f := setup(t)
	var in []store.Message
	for i := range 300 {
		in = append(in, store.Message{Topic: []string{"a", "b"}[i%2], Key: fmt.Sprintf("k%d", i%7), Payload: []byte(strconv.Itoa(i))})
	}
	f.write(t, in...)
	pub := &batchPublisher{Publisher: f.pub}
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{BatchSize: 100}))
	require.NoError(t, err)
	n, err := d.Drain(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 300, n)
	require.Equal(t, int32(6), pub.calls.Load(), "3 batches x 2 topics")
	requireOrderPerKey(t, f.pub.Messages("a")) // order holds per topic and key
	requireOrderPerKey(t, f.pub.Messages("b"))
}

// requireOrderPerKey checks that msgs, all of one topic, keep each key's write order (the
// payload is the write index).
func requireOrderPerKey(t *testing.T, msgs []*message.Message) {
	t.Helper()
	last := map[string]int{}
	for _, m := range msgs {
		i, err := strconv.Atoi(string(m.Payload))
		require.NoError(t, err)
		key := m.Metadata.Get(publisher.MetadataKey)
		if key == "" {
			continue
		}
		if prev, ok := last[key]; ok {
			require.Less(t, prev, i, "key %s out of order", key)
		}
		last[key] = i
	}
}

// In a batch, a failure holds back only the later messages of its key; the rest is marked.
func TestBatchPartialFailure(t *testing.T) {
	f := setup(t)
	ids := f.write(t,
		store.Message{Topic: "t", Key: "A", Payload: []byte("a1")},
		store.Message{Topic: "t", Key: "B", Payload: []byte("b1")},
		store.Message{Topic: "t", Key: "A", Payload: []byte("a2")},
		store.Message{Topic: "t", Key: "A", Payload: []byte("a3")},
		store.Message{Topic: "t", Payload: []byte("n1")},
	)
	var failA2 atomic.Bool
	failA2.Store(true)
	f.pub.Fail = func(_ string, m *message.Message) error {
		if string(m.Payload) == "a2" && failA2.Load() {
			return errors.New("a2 refused")
		}
		if string(m.Payload) == "a3" {
			return errors.New("a3 refused too, behind a2")
		}
		return nil
	}
	pub := &batchPublisher{Publisher: f.pub}
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{RetryInitial: time.Hour, RetryMax: time.Hour}))
	require.NoError(t, err)
	n, err := d.Drain(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n, "a1, b1 and n1")

	list, err := f.st.List(f.ctx, &store.ListParams{Key: "A", State: store.Pending})
	require.NoError(t, err)
	require.Len(t, list.Messages, 2)
	require.Equal(t, ids[2], list.Messages[0].ID)
	require.Equal(t, 1, list.Messages[0].Attempts, "a2 failed once")
	require.Equal(t, "a2 refused", list.Messages[0].LastError)
	require.Equal(t, ids[3], list.Messages[1].ID)
	require.Zero(t, list.Messages[1].Attempts, "a3 waits behind a2; its own failure is not counted")
	require.Equal(t, dispatcher.Stats{Published: 3, Failed: 1}, d.Stats())
}

func TestPermanentErrorParksAtOnceAndDeadLetters(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			f := setup(t)
			ids := f.write(t,
				store.Message{Topic: "orders", Key: "K", Payload: []byte("too big"), Headers: map[string]string{"h": "v"}},
				store.Message{Topic: "orders", Key: "K", Payload: []byte("next")},
			)
			f.pub.Fail = func(topic string, m *message.Message) error {
				if topic == "orders" && string(m.Payload) == "too big" {
					return publisher.Permanent(errors.New("message too large for the broker"))
				}
				return nil
			}
			var pub message.Publisher = f.pub
			if batch {
				pub = &batchPublisher{Publisher: f.pub}
			}
			d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{MaxAttempts: 10, DeadLetterTopic: "orders.dead"}))
			require.NoError(t, err)
			_, err = d.Drain(f.ctx)
			require.NoError(t, err)

			parked, err := f.st.List(f.ctx, &store.ListParams{State: store.Parked})
			require.NoError(t, err)
			require.Len(t, parked.Messages, 1)
			require.Equal(t, ids[0], parked.Messages[0].ID)
			require.Equal(t, 1, parked.Messages[0].Attempts, "no retries for a permanent error")

			dead := f.pub.Messages("orders.dead")
			require.Len(t, dead, 1)
			require.Equal(t, ids[0], dead[0].UUID)
			require.Equal(t, "too big", string(dead[0].Payload))
			require.Equal(t, "message too large for the broker", dead[0].Metadata.Get(publisher.MetadataError))
			require.Equal(t, "orders", dead[0].Metadata.Get(publisher.MetadataTopic))
			require.Equal(t, "v", dead[0].Metadata.Get("h"))

			delivered := f.pub.Messages("orders")
			require.Len(t, delivered, 1, "the key moved on")
			require.Equal(t, ids[1], delivered[0].UUID)
		})
	}
}
