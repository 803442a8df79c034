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

// rawFields returns the field names of each entry of the stream, in the order Redis keeps
// them.
func rawFields(t *testing.T, c *redis.Client, stream string) [][]string {
	t.Helper()
	res, err := c.Do(context.Background(), "XRANGE", stream, "-", "+").Slice()
	require.NoError(t, err)
	var out [][]string
	for _, e := range res {
		kv := e.([]any)[1].([]any)
		var names []string
		for i := 0; i < len(kv); i += 2 {
			names = append(names, kv[i].(string))
		}
		out = append(out, names)
	}
	return out
}

// Every entry has its fields in one order, so that Redis stores them once per stream node
// rather than in each entry (the fields of a Go map come in a random order).
func TestRedisEntriesKeepOneFieldOrder(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{Client: c})
	var batch []*message.Message
	for i := range 200 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%7)))
	}
	batch = append(batch, message.NewMessage("no-metadata", nil))
	require.NoError(t, pub.PublishBatch(stream, batch))
	fields := rawFields(t, c, stream)
	require.Len(t, fields, len(batch))
	for i, f := range fields {
		require.Equal(t, []string{wmredis.UUIDHeaderKey, "metadata", "payload"}, f, "entry %d", i)
	}
	got := read(t, c, stream)
	require.Empty(t, got[len(got)-1].Metadata)
	require.Empty(t, got[len(got)-1].Payload)
}

// The metadata is encoded byte for byte as watermill-redisstream's marshaller encodes it,
// across msgpack's string and map sizes.
func TestRedisMetadataIsWatermills(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{Client: c})
	var batch []*message.Message
	for _, n := range []int{0, 31, 32, 255, 256, 65535, 65536} {
		m := message.NewMessage(fmt.Sprintf("len-%d", n), []byte("p"))
		m.Metadata.Set(strings.Repeat("k", n%40+1), strings.Repeat("v", n))
		batch = append(batch, m)
	}
	for _, n := range []int{15, 16, 300} { // fixmap, map16
		m := message.NewMessage(fmt.Sprintf("keys-%d", n), []byte("p"))
		for i := range n {
			m.Metadata.Set(fmt.Sprintf("h%d", i), strings.Repeat("x", i))
		}
		batch = append(batch, m)
	}
	require.NoError(t, pub.PublishBatch(stream, batch))
	entries, err := c.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, len(batch))
	for i, e := range entries {
		want, err := wmredis.DefaultMarshallerUnmarshaller{}.Marshal(stream, batch[i])
		require.NoError(t, err)
		if len(batch[i].Metadata) == 1 { // one key: one encoding
			require.Equal(t, string(want["metadata"].([]byte)), e.Values["metadata"], batch[i].UUID)
		}
		m, err := wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(e.Values)
		require.NoError(t, err)
		require.Equal(t, batch[i].Metadata, m.Metadata, batch[i].UUID)
	}
}

// A batch far larger than the encoder's first guess at its size (metadata of a few hundred
// bytes a message, messages that fail in between) is appended in order, each entry as
// its message, and reports exactly the failed messages and those held behind them.
func TestRedisLargeBatchKeepsOrderAndReportsFailures(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	pub := newPublisher(t, redispub.Config{Client: c, MaxLen: 1 << 20})
	var batch []*message.Message
	wantFailed := map[string]bool{}
	badKeys := map[string]bool{}
	for i := range 3000 {
		key := fmt.Sprintf("k%d", i%50)
		m := keyed(i, key)
		m.Metadata.Set("trace", strings.Repeat("t", i%400))
		if i%701 == 100 {
			m.Metadata.Set(wmredis.UUIDHeaderKey, "reserved")
			badKeys[key] = true
		}
		if badKeys[key] {
			wantFailed[m.UUID] = true
		}
		batch = append(batch, m)
	}
	err := pub.PublishBatch(stream, batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, len(wantFailed))
	for id := range wantFailed {
		require.Contains(t, be.Failed, id)
	}
	var sent []*message.Message
	for _, m := range batch {
		if !wantFailed[m.UUID] {
			sent = append(sent, m)
		}
	}
	got := read(t, c, stream)
	require.Len(t, got, len(sent))
	for i, m := range got {
		require.Equal(t, sent[i].UUID, m.UUID, "stream order is batch order")
		require.Equal(t, string(sent[i].Payload), string(m.Payload))
		require.Equal(t, sent[i].Metadata, m.Metadata)
	}
}

// tagging is a marshaller of the application's own: watermill's format plus a field.
type tagging struct{ fail string }

func (m tagging) Marshal(topic string, msg *message.Message) (map[string]any, error) {
	if msg.UUID == m.fail {
		return nil, errors.New("cannot marshal")
	}
	v, err := wmredis.DefaultMarshallerUnmarshaller{}.Marshal(topic, msg)
	if err == nil {
		v["tag"] = "t"
	}
	return v, err
}

// A Marshaller of the application's own sets the fields, in their names' order; its errors
// park the message and hold its key.
func TestRedisCustomMarshaller(t *testing.T) {
	c := client(t)
	stream := streamName(t, c)
	batch := []*message.Message{keyed(0, "A"), keyed(1, "A"), keyed(2, "A"), keyed(3, "B")}
	pub := newPublisher(t, redispub.Config{Client: c, MaxLen: 1000, Marshaller: tagging{fail: batch[1].UUID}})
	err := pub.PublishBatch(stream, batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 2)
	require.True(t, publisher.IsPermanent(be.Failed[batch[1].UUID]))
	require.Contains(t, be.Failed, batch[2].UUID)
	got := read(t, c, stream)
	require.Len(t, got, 2)
	require.Equal(t, batch[0].UUID, got[0].UUID)
	require.Equal(t, batch[3].UUID, got[1].UUID)
	require.Equal(t, batch[3].Metadata, got[1].Metadata)
	for _, f := range rawFields(t, c, stream) {
		require.Equal(t, []string{wmredis.UUIDHeaderKey, "metadata", "payload", "tag"}, f)
	}
}

// BenchmarkPublishBatch publishes batches of 500 messages shaped as the dispatcher hands
// them over (256-byte payloads, the outbox's metadata).
func BenchmarkPublishBatch(b *testing.B) {
	opts, err := redis.ParseURL(redisURL())
	require.NoError(b, err)
	c := redis.NewClient(opts)
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err != nil {
		b.Skipf("Redis is not reachable: %v", err)
	}
	stream := fmt.Sprintf("outbox-bench-%d", time.Now().UnixNano())
	defer c.Del(context.Background(), stream)
	pub, err := redispub.New(redispub.Config{Client: c})
	require.NoError(b, err)
	payload := []byte(strings.Repeat("p", 256))
	batch := make([]*message.Message, 500)
	for i := range batch {
		id := fmt.Sprintf("0193a1b2-c3d4-7e5f-8a9b-%012d", i)
		m := message.NewMessage(id, payload)
		m.Metadata.Set(publisher.MetadataID, id)
		m.Metadata.Set(publisher.MetadataKey, fmt.Sprintf("key-%d", i%1000))
		m.Metadata.Set(publisher.MetadataCreatedAt, time.Now().Format(time.RFC3339Nano))
		batch[i] = m
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := pub.PublishBatch(stream, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
	c.Del(context.Background(), stream)
}
