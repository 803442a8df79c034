package kafkapub_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
)

func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	if len(opts) == 0 {
		c, err := kafkatest.NewCluster()
		require.NoError(t, err)
		t.Cleanup(c.Close)
		return c
	}
	c, err := kfake.NewCluster(opts...)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func newKafka(t *testing.T, brokers []string) *kafkapub.Publisher {
	t.Helper()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	return pub
}

func keyed(i int, key string) *message.Message {
	m := message.NewMessage(fmt.Sprintf("id-%d", i), []byte(fmt.Sprint(i)))
	if key != "" {
		m.Metadata.Set(publisher.MetadataKey, key)
	}
	return m
}

// A batch goes out in a handful of produce requests, not one per message.
func TestKafkaSendsABatchInFewRequests(t *testing.T) {
	cluster := newCluster(t)
	pub := newKafka(t, cluster.ListenAddrs())
	require.NoError(t, pub.PublishBatch("warmup", []*message.Message{keyed(-1, "")})) // metadata, producer id

	var produces atomic.Int32
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		produces.Add(1)
		return nil, nil, false
	})
	var batch []*message.Message
	for i := range 500 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%50)))
	}
	start := time.Now()
	require.NoError(t, pub.PublishBatch("orders", batch))
	t.Logf("500 messages in %d produce requests, %v", produces.Load(), time.Since(start))
	require.Less(t, produces.Load(), int32(50), "watermill-kafka would send 500")

	consumer, err := kafkatest.NewConsumer(cluster.ListenAddrs(), "orders")
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, 30*time.Second), 500)
	require.NoError(t, err)
	last := map[string]int{}
	for _, r := range recs {
		var i int
		fmt.Sscan(string(r.Value), &i)
		if prev, ok := last[r.Key]; ok {
			require.Less(t, prev, i, "key %s out of order", r.Key)
		}
		last[r.Key] = i
		require.Equal(t, fmt.Sprintf("id-%d", i), r.Headers["_watermill_message_uuid"])
	}
}

// One message over the producer's size limit fails alone and permanently; the rest is sent.
func TestKafkaReportsWhichMessagesFailed(t *testing.T) {
	cluster := newCluster(t)
	pub := newKafka(t, cluster.ListenAddrs())
	big := message.NewMessage("too-big", []byte(strings.Repeat("x", 1_100_000)))
	big.Metadata.Set(publisher.MetadataKey, "c")
	batch := []*message.Message{keyed(1, "a"), big, keyed(2, "b"), keyed(3, "c")}
	err := pub.PublishBatch("orders", batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 2)
	require.Contains(t, be.Failed, "too-big")
	require.True(t, publisher.IsPermanent(be.Failed["too-big"]), "%v", be.Failed["too-big"])
	// Sent, the next message of its key would overtake it: it is not sent, and may be retried.
	require.Contains(t, be.Failed, "id-3")
	require.False(t, publisher.IsPermanent(be.Failed["id-3"]))

	consumer, err := kafkatest.NewConsumer(cluster.ListenAddrs(), "orders")
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, 30*time.Second), 2)
	require.NoError(t, err)
	require.Len(t, recs, 2)
}

func TestKafkaMarshalErrorIsPermanent(t *testing.T) {
	cluster := newCluster(t)
	pub := newKafka(t, cluster.ListenAddrs())
	bad := keyed(1, "a")
	bad.Metadata.Set("_watermill_message_uuid", "reserved by watermill-kafka")
	err := pub.PublishBatch("orders", []*message.Message{bad, keyed(2, "b"), keyed(3, "a")})
	require.True(t, publisher.IsPermanent(failureFor(err, "id-1")), "%v", err)
	require.NoError(t, failureFor(err, "id-2"))
	require.ErrorContains(t, failureFor(err, "id-3"), `an earlier message of key "a" failed`)
	require.False(t, publisher.IsPermanent(failureFor(err, "id-3")))
}

func TestKafkaClosed(t *testing.T) {
	cluster := newCluster(t)
	pub := newKafka(t, cluster.ListenAddrs())
	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close(), "closing twice is fine")
	require.ErrorContains(t, pub.Publish("orders", keyed(1, "")), "closed")
}

func failureFor(err error, id string) error {
	var be *publisher.BatchError
	if errors.As(err, &be) {
		return be.Failed[id]
	}
	return err
}
