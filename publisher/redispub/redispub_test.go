package redispub_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/redispub"
)

// redisURL is the Redis server for tests; make test starts it with .ci/services.
func redisURL() string {
	if v := os.Getenv("OUTBOX_TEST_REDIS"); v != "" {
		return v
	}
	return "redis://127.0.0.1:6379/0"
}

// client connects to the test server, skipping the test where it is not running, except
// under CI.
func client(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redisURL())
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is not reachable under CI (make test starts it with .ci/services): %v", err)
		}
		t.Skipf("Redis is not reachable; skipping (make test starts it with .ci/services): %v", err)
	}
	return c
}

// streamName is a stream of the test's own, deleted when the test ends.
func streamName(t *testing.T, c *redis.Client) string {
	name := fmt.Sprintf("outbox-test-%d", time.Now().UnixNano())
	t.Cleanup(func() { c.Del(context.Background(), name) })
	return name
}

func newPublisher(t *testing.T, cfg redispub.Config) *redispub.Publisher {
	t.Helper()
	if cfg.URL == "" && cfg.Client == nil {
		cfg.URL = redisURL()
	}
	pub, err := redispub.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	return pub
}

func keyed(i int, key string) *message.Message {
	m := message.NewMessage(fmt.Sprintf("id-%d-%d", time.Now().UnixNano(), i), []byte(strconv.Itoa(i)))
	m.Metadata.Set(publisher.MetadataID, m.UUID)
	if key != "" {
		m.Metadata.Set(publisher.MetadataKey, key)
	}
	m.Metadata.Set("content-type", "text/plain")
	return m
}

// read returns the entries of the stream, in order, as watermill-redisstream reads them.
func read(t *testing.T, c *redis.Client, stream string) []*message.Message {
	t.Helper()
	entries, err := c.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(t, err)
	var out []*message.Message
	for _, e := range entries {
		m, err := wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(e.Values)
		require.NoError(t, err)
		out = append(out, m)
	}
	return out
}

func TestNewChecksItsConfig(t *testing.T) {
	other := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer other.Close()
	for _, tc := range []struct {
		cfg  redispub.Config
		want string
	}{
		{redispub.Config{}, "URL: required"},
		{redispub.Config{URL: "redis://127.0.0.1:6379", Client: other}, "Client: set URL or Client"},
		{redispub.Config{URL: "http://127.0.0.1:6379"}, "URL: "},
		{redispub.Config{URL: "redis://127.0.0.1:6379", MaxLen: -1}, "MaxLen: must not be negative"},
		{redispub.Config{URL: "redis://127.0.0.1:6379", Timeout: -time.Second}, "Timeout: must not be negative"},
	} {
		_, err := redispub.New(tc.cfg)
		require.ErrorContains(t, err, tc.want)
		require.True(t, strings.HasPrefix(err.Error(), "outbox: redispub.New: "), err.Error())
	}
}

// A batch is appended in order, in watermill-redisstream's format; published again, it is
// appended again (Redis drops no duplicates: consumers do, by id).
func TestRedisPublishesABatchInOrder(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{})
	var batch []*message.Message
	for i := range 500 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%7)))
	}
	require.NoError(t, pub.PublishBatch(stream, batch))
	got := read(t, c, stream)
	require.Len(t, got, len(batch))
	for i, m := range got {
		require.Equal(t, batch[i].UUID, m.UUID, "stream order is batch order")
		require.Equal(t, string(batch[i].Payload), string(m.Payload))
		require.Equal(t, batch[i].Metadata, m.Metadata)
	}
	require.NoError(t, pub.PublishBatch(stream, batch[:10]))
	require.Len(t, read(t, c, stream), len(batch)+10)
}

// A message that cannot be marshaled is parked at once and holds back the later messages of
// its key, unsent; the other keys are published.
func TestRedisFailureHoldsItsKeyOnly(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{Client: c})
	bad := keyed(1, "A")
	bad.Metadata.Set(wmredis.UUIDHeaderKey, "reserved")
	batch := []*message.Message{keyed(0, "A"), bad, keyed(2, "A"), keyed(3, "B"), keyed(4, "")}
	err := pub.PublishBatch(stream, batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 2, "%v", err)
	require.True(t, publisher.IsPermanent(be.Failed[bad.UUID]), "%v", be.Failed[bad.UUID])
	require.ErrorContains(t, be.Failed[batch[2].UUID], `not sent: an earlier message of key "A" failed`)
	require.False(t, publisher.IsPermanent(be.Failed[batch[2].UUID]))
	var ids []string
	for _, m := range read(t, c, stream) {
		ids = append(ids, m.UUID)
	}
	require.Equal(t, []string{batch[0].UUID, batch[3].UUID, batch[4].UUID}, ids)
	require.NoError(t, pub.Close())
	require.NoError(t, c.Ping(context.Background()).Err(), "Close leaves a client it was given open")
}

// Redis's own refusals are for an operator to fix, and retried: here the topic's key holds a
// string.
func TestRedisRefusalIsRetried(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	require.NoError(t, c.Set(context.Background(), stream, "not a stream", 0).Err())
	pub := newPublisher(t, redispub.Config{})
	err := pub.PublishBatch(stream, []*message.Message{keyed(1, "a"), keyed(2, "b")})
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 2)
	for _, e := range be.Failed {
		require.ErrorContains(t, e, "WRONGTYPE")
		require.False(t, publisher.IsPermanent(e))
	}
}

func TestRedisMaxLenTrims(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{MaxLen: 100})
	for range 20 {
		var batch []*message.Message
		for i := range 100 {
			batch = append(batch, keyed(i, "k"))
		}
		require.NoError(t, pub.PublishBatch(stream, batch))
	}
	n, err := c.XLen(context.Background(), stream).Result()
	require.NoError(t, err)
	require.Less(t, n, int64(2000), "trimmed (about 100; Redis trims whole nodes)")
}

// New does not connect; publishes fail retryably while Redis is down.
func TestRedisStartsWhileTheServerIsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	pub := newPublisher(t, redispub.Config{URL: "redis://" + addr, Timeout: time.Second})
	err = pub.PublishBatch("orders", []*message.Message{keyed(1, "a"), keyed(2, "b")})
	require.Error(t, err)
	require.False(t, publisher.IsPermanent(err), "%v", err)
	var be *publisher.BatchError
	if errors.As(err, &be) {
		for _, e := range be.Failed {
			require.False(t, publisher.IsPermanent(e), "%v", e)
		}
	}
	require.NoError(t, pub.Close())
	require.ErrorContains(t, pub.PublishBatch("orders", []*message.Message{keyed(1, "a")}), "closed")
}

// A batch costs one round trip, not one per message: through a link that delays each
// direction by 20 ms, 500 messages one at a time would take 20 s.
func TestRedisBatchIsPipelined(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	proxy := delayProxy(t, c.Options().Addr, 20*time.Millisecond)
	pub := newPublisher(t, redispub.Config{URL: "redis://" + proxy})
	require.NoError(t, pub.PublishBatch(stream, []*message.Message{keyed(-1, "")})) // connected
	var batch []*message.Message
	for i := range 500 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%10)))
	}
	start := time.Now()
	require.NoError(t, pub.PublishBatch(stream, batch))
	took := time.Since(start)
	t.Logf("500 messages through a 2 x 20 ms link: %v", took)
	require.Less(t, took, 2*time.Second)
	require.Len(t, read(t, c, stream), 501)
}

// delayProxy forwards TCP connections to target, delivering each chunk read in either
// direction delay after it was read, in order. It returns its address.
func delayProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		type chunk struct {
			at   time.Time
			data []byte
		}
		ch := make(chan chunk, 1024)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer dst.Close()
			for c := range ch {
				time.Sleep(time.Until(c.at))
				if _, err := dst.Write(c.data); err != nil {
					return
				}
			}
		}()
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{time.Now().Add(delay), append([]byte(nil), buf[:n]...)}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					src.Close()
				}
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return l.Addr().String()
}
