package kafkapub_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/eapache/go-resiliency/breaker"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// What a deploy meets: Kafka not up yet when the application starts, and topics created just
// after the application that writes to them.

// A port nothing listens on, for a broker started later. Another process may take it in
// between; on loopback that is unlikely enough for a test.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// startClusterOn starts a one-broker cluster on port, creating topics on first use.
func startClusterOn(t *testing.T, port int) *kfake.Cluster {
	t.Helper()
	return newCluster(t, kfake.Ports(port), kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(kafkatest.Partitions))
}

// createTopic creates topic as an operator would, with franz-go's admin request.
func createTopic(t *testing.T, brokers []string, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	require.NoError(t, err)
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 4, 1
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctxWithTimeout(t, 10*time.Second), cl)
	require.NoError(t, err)
	require.Len(t, resp.Topics, 1)
	require.NoError(t, kerr.ErrorForCode(resp.Topics[0].ErrorCode))
}

func readOne(t *testing.T, brokers []string, topic string) kafkatest.Record {
	t.Helper()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, 30*time.Second), 1)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	return recs[0]
}

// New does not need the brokers; publishing fails retryably until they answer, and the
// publisher connects on the first publish after that.
func TestKafkaConnectsOnceTheBrokerIsUp(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	brokers := []string{fmt.Sprintf("127.0.0.1:%d", port)}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	require.NoError(t, err, "Kafka down is no reason to refuse to start")
	defer pub.Close()

	for range 2 { // each publish tries again
		err = pub.PublishBatch("orders", []*message.Message{keyed(1, "a")})
		require.ErrorIs(t, err, sarama.ErrOutOfBrokers)
		require.ErrorContains(t, err, "not reachable")
		require.False(t, publisher.IsPermanent(failureFor(err, "id-1")), "%v", err)
	}

	startClusterOn(t, port)
	require.NoError(t, pub.PublishBatch("orders", []*message.Message{keyed(1, "a")}))
	rec := readOne(t, brokers, "orders")
	require.Equal(t, "a", rec.Key)
	require.Equal(t, "1", string(rec.Value))
}

// A connection attempt that hangs (a broker that accepts and never answers) does not hold
// Close up; the attempt, when it ends, closes what it opened.
func TestKafkaCloseDoesNotWaitForAConnection(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	cfg := kafkapub.SaramaConfig()
	cfg.Net.ReadTimeout = time.Second
	cfg.Metadata.Retry.Max = 0
	pub, err := kafkapub.New(kafkapub.Config{Brokers: []string{l.Addr().String()}, Sarama: cfg})
	require.NoError(t, err)
	published := make(chan error, 1)
	go func() { published <- pub.Publish("orders", keyed(1, "a")) }()
	conn := <-accepted
	defer conn.Close()

	require.NoError(t, pub.Close())
	select {
	case err := <-published:
		t.Fatalf("the publish ended before Close: %v", err)
	default:
	}
	err = <-published
	require.Error(t, err)
	require.False(t, publisher.IsPermanent(err), "%v", err)
	require.ErrorContains(t, pub.Publish("orders", keyed(2, "a")), "closed")
}

// A configuration sarama refuses fails at once, not on each publish.
func TestNewChecksTheConfig(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		change func(*sarama.Config)
		want   string
	}{
		"no successes": {func(c *sarama.Config) { c.Producer.Return.Successes = false }, "Producer.Return.Successes"},
		"idempotent without acks from all": {func(c *sarama.Config) { c.Producer.RequiredAcks = sarama.WaitForLocal },
			"Idempotent producer requires Producer.RequiredAcks to be WaitForAll"},
		"negative dial timeout": {func(c *sarama.Config) { c.Net.DialTimeout = -1 }, "Net.DialTimeout"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := kafkapub.SaramaConfig()
			tc.change(cfg)
			_, err := kafkapub.New(kafkapub.Config{Brokers: []string{"127.0.0.1:1"}, Sarama: cfg})
			require.ErrorContains(t, err, "kafkapub.New")
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// Kafka calls an unknown topic retriable: the message is retried, not parked, and goes out
// once the topic exists.
func TestKafkaRetriesATopicNotCreatedYet(t *testing.T) {
	t.Parallel()
	cluster := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "exists")) // no auto-creation
	brokers := cluster.ListenAddrs()
	pub := newKafka(t, brokers)
	require.NoError(t, pub.PublishBatch("exists", []*message.Message{keyed(1, "a")}))

	err := pub.PublishBatch("missing", []*message.Message{keyed(2, "a")})
	require.ErrorIs(t, failureFor(err, "id-2"), sarama.ErrUnknownTopicOrPartition)
	require.False(t, publisher.IsPermanent(failureFor(err, "id-2")), "%v", err)

	createTopic(t, brokers, "missing")
	require.NoError(t, pub.PublishBatch("missing", []*message.Message{keyed(2, "a")}))
	require.Equal(t, "2", string(readOne(t, brokers, "missing").Value))
}

// After 3 failures in a row sarama fails a topic's or partition's messages at once for 10 s
// with "circuit breaker is open"; the error says what opened it.
func TestKafkaCircuitBreakerSaysWhy(t *testing.T) {
	t.Parallel()
	cluster, err := kafkatest.NewCluster()
	require.NoError(t, err)
	cfg := kafkapub.SaramaConfig()
	cfg.Metadata.Retry.Max = 0 // fail fast
	cfg.Producer.Retry.Max = 1
	pub, err := kafkapub.New(kafkapub.Config{Brokers: cluster.ListenAddrs(), Sarama: cfg})
	require.NoError(t, err)
	defer pub.Close()
	require.NoError(t, pub.PublishBatch("orders", []*message.Message{keyed(0, "a")}))
	cluster.Close()
	var last error
	for range 20 {
		batch := []*message.Message{keyed(1, "a"), keyed(2, "a"), keyed(3, "a")}
		err := pub.PublishBatch("orders", batch)
		require.Error(t, err)
		last = failureFor(err, "id-3")
		require.False(t, publisher.IsPermanent(last), "%v", last)
		if errors.Is(last, breaker.ErrBreakerOpen) {
			break
		}
	}
	require.ErrorContains(t, last, "circuit breaker is open")
	require.ErrorContains(t, last, "the last failure for this topic: ")
}

// The dispatcher started while Kafka is down: its messages wait, are neither parked nor
// reordered, and go out once Kafka is up.
func TestDispatcherWaitsForKafka(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	brokers := []string{fmt.Sprintf("127.0.0.1:%d", port)}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	require.NoError(t, err)
	defer pub.Close()
	f := startDispatcher(t, pub)

	f.write(t, "payments", 10)
	require.Eventually(t, func() bool { return f.d.Stats().Failed > 0 }, 30*time.Second, 10*time.Millisecond)
	startClusterOn(t, port)
	f.requireDelivered(t, brokers, "payments", 10)
}

// The dispatcher writing to a topic that is created a moment later: the same.
func TestDispatcherWaitsForATopic(t *testing.T) {
	t.Parallel()
	cluster := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "exists"))
	brokers := cluster.ListenAddrs()
	f := startDispatcher(t, newKafka(t, brokers))

	f.write(t, "refunds", 10)
	require.Eventually(t, func() bool { return f.d.Stats().Failed > 0 }, 30*time.Second, 10*time.Millisecond)
	createTopic(t, brokers, "refunds")
	f.requireDelivered(t, brokers, "refunds", 10)
}

type dispatcherFixture struct {
	st  dbtest.Store
	d   *dispatcher.Dispatcher
	ctx context.Context
}

func startDispatcher(t *testing.T, pub *kafkapub.Publisher) *dispatcherFixture {
	t.Helper()
	ctx := ctxWithTimeout(t, 2*time.Minute)
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	// Short waits between attempts, and enough of them that none is parked meanwhile.
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: slog.New(slog.DiscardHandler), PollInterval: 20 * time.Millisecond,
		RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, MaxAttempts: 1000})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	return &dispatcherFixture{st: st, d: d, ctx: ctx}
}

// write writes n messages to topic, all of key "k", one transaction each.
func (f *dispatcherFixture) write(t *testing.T, topic string, n int) {
	t.Helper()
	for i := range n {
		tx, err := f.st.DB().BeginTx(f.ctx, nil)
		require.NoError(t, err)
		require.NoError(t, f.st.Write(f.ctx, tx, store.Message{ID: store.NewID(), Topic: topic, Key: "k", Payload: []byte(strconv.Itoa(i))}))
		require.NoError(t, tx.Commit())
	}
}

func (f *dispatcherFixture) requireDelivered(t *testing.T, brokers []string, topic string, n int) {
	t.Helper()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	require.NoError(t, err)
	defer consumer.Close()
	recs, err := consumer.ReadN(ctxWithTimeout(t, time.Minute), n)
	require.NoError(t, err)
	require.Len(t, recs, n)
	for i, r := range recs {
		require.Equal(t, strconv.Itoa(i), string(r.Value), "in write order, once each")
	}
	require.Zero(t, f.d.Stats().Parked)
	require.Positive(t, f.d.Stats().Failed)
}
