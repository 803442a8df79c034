package dispatcher_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/publisher/redispub"
)

// Redis Streams keep each key's order with one stream per topic, in the order the server
// runs the XADDs: the dispatcher publishes a key's messages in write order, and one consumer
// of the stream (here a consumer group with one consumer) reads them back in it.

// redisURL is the Redis server for tests; make test starts it with .ci/services. Where it
// cannot be reached the test is skipped, except under CI.
func redisURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("OUTBOX_TEST_REDIS")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	c := redisClient(t, url)
	if err := c.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is not reachable under CI (make test starts it with .ci/services): %v", err)
		}
		t.Skipf("Redis is not reachable; skipping (make test starts it with .ci/services): %v", err)
	}
	return url
}

// redisClient is a client of its own, closed when the test ends.
func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// redisStream names a stream of the test's own, deleted when the test ends.
func redisStream(t *testing.T, url string) string {
	t.Helper()
	name := "outbox-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	c := redisClient(t, url)
	t.Cleanup(func() { c.Del(context.Background(), name) })
	return name
}

// redisSubscriber is watermill-redisstream's subscriber in a consumer group that reads the
// stream from its start, one entry at a time.
func redisSubscriber(t *testing.T, url string) message.Subscriber {
	t.Helper()
	sub, err := wmredis.NewSubscriber(wmredis.SubscriberConfig{
		Client:        redisClient(t, url),
		ConsumerGroup: "outbox-test",
		OldestId:      "0",
		BlockTime:     100 * time.Millisecond,
		// Without it the first read blocks until a message comes, past Close.
		DisableIndefiniteInitialBlock: true,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { sub.Close() })
	return sub
}

// readRedisStream reads every entry of a stream, in order, with an independent client.
func readRedisStream(t *testing.T, url, stream string) []*message.Message {
	t.Helper()
	entries, err := redisClient(t, url).XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(t, err)
	var out []*message.Message
	for _, e := range entries {
		m, err := wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(e.Values)
		require.NoError(t, err)
		out = append(out, m)
	}
	return out
}

// watermill-redisstream's own publisher, one XADD and its answer per message.
func TestRedisEndToEnd(t *testing.T) {
	f := setup(t)
	url := redisURL(t)
	topic := redisStream(t, url)
	pub, err := wmredis.NewPublisher(wmredis.PublisherConfig{Client: redisClient(t, url)}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() }) // after the dispatcher stopped (cleanups run in reverse)
	res := requireEndToEndThroughInbox(t, f, pub, topic, redisSubscriber(t, url))
	require.Greater(t, res.deliveries, brokerMessages, "Redis keeps the copies published again: the inbox dropped them")
}

// publisher/redispub: a batch as one pipeline of XADDs.
func TestRedisBatchEndToEnd(t *testing.T) {
	f := setup(t)
	url := redisURL(t)
	topic := redisStream(t, url)
	pub, err := redispub.New(redispub.Config{URL: url})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	res := requireEndToEndThroughInbox(t, f, pub, topic, redisSubscriber(t, url))
	require.Greater(t, res.deliveries, brokerMessages, "Redis keeps the copies published again: the inbox dropped them")
	require.Len(t, readRedisStream(t, url, topic), res.deliveries)
}

// A Redis server of the test's own is stopped for 10 s while the application writes, then
// started again on its append-only file (appendfsync always: every answered XADD is on disk;
// the shared test server keeps nothing across a restart).
func TestRedisOutageLosesNothingAndResumes(t *testing.T) {
	server := startPrivateBroker(t, "redis-server", func(port int, dir string) []string {
		return []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "yes",
			"--appendfsync", "always", "--dir", dir, "--daemonize", "no"}
	})
	url := "redis://" + server.addr()
	requireOutageLosesNothing(t, outageBroker{
		server: server,
		publisher: func(t *testing.T) message.Publisher {
			pub, err := redispub.New(redispub.Config{URL: url, Timeout: 2 * time.Second})
			require.NoError(t, err)
			t.Cleanup(func() { pub.Close() })
			return pub
		},
		readAll: func(t *testing.T) []*message.Message { return readRedisStream(t, url, instanceTopic) },
	})
}
