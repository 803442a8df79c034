package natspub_test

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

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/natspub"
)

// natsURL is the NATS server (with JetStream) for tests; make test starts it with
// .ci/services.
func natsURL() string {
	if v := os.Getenv("OUTBOX_TEST_NATS"); v != "" {
		return v
	}
	return "nats://127.0.0.1:4222"
}

// connect connects to the test server, skipping the test where it is not running, except
// under CI.
func connect(t *testing.T) *natsio.Conn {
	t.Helper()
	nc, err := natsio.Connect(natsURL(), natsio.ReconnectBufSize(-1))
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NATS is not reachable under CI (make test starts it with .ci/services): %v", err)
		}
		t.Skipf("NATS is not reachable; skipping (make test starts it with .ci/services): %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// stream creates a stream of the test's own, deleted when the test ends, and returns its
// subject.
func stream(t *testing.T, nc *natsio.Conn, cfg jetstream.StreamConfig) (jetstream.JetStream, string) {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	name := fmt.Sprintf("outbox_test_%d", time.Now().UnixNano())
	cfg.Name, cfg.Subjects = name, []string{name}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, cfg)
	require.NoError(t, err, "JetStream on (nats-server -js)?")
	t.Cleanup(func() { js.DeleteStream(context.Background(), name) })
	return js, name
}

func newPublisher(t *testing.T, cfg natspub.Config) *natspub.Publisher {
	t.Helper()
	if cfg.URL == "" && cfg.Conn == nil {
		cfg.URL = natsURL()
	}
	pub, err := natspub.New(cfg)
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

// read returns the messages of the stream, in stream order, as watermill-nats reads them.
func read(t *testing.T, js jetstream.JetStream, name string) []*message.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	require.NoError(t, err)
	n := s.CachedInfo().State.Msgs
	if n == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	batch, err := c.Fetch(int(n), jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var out []*message.Message
	for m := range batch.Messages() {
		wm, err := (&wmnats.NATSMarshaler{}).Unmarshal(&natsio.Msg{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
		require.NoError(t, err)
		out = append(out, wm)
	}
	require.NoError(t, batch.Error())
	require.Len(t, out, int(n))
	return out
}

func TestNewChecksItsConfig(t *testing.T) {
	own, err := natsio.Connect("nats://127.0.0.1:1", natsio.RetryOnFailedConnect(true), natsio.MaxReconnects(-1))
	require.NoError(t, err)
	defer own.Close()
	for _, tc := range []struct {
		cfg  natspub.Config
		want string
	}{
		{natspub.Config{}, "URL: required"},
		{natspub.Config{URL: "nats://127.0.0.1:4222", Conn: own}, "Conn: set URL or Conn"},
		{natspub.Config{Conn: own, Options: []natsio.Option{natsio.Name("x")}}, "Options:"},
		{natspub.Config{Conn: own}, "Conn: connect with nats.ReconnectBufSize(-1)"},
		{natspub.Config{URL: "nats://127.0.0.1:1", AckTimeout: -time.Second}, "AckTimeout: must not be negative"},
		{natspub.Config{URL: "nats://127.0.0.1:1", MaxPending: -1}, "MaxPending: must not be negative"},
		{natspub.Config{URL: "nats://[::1"}, "URL:"},
	} {
		_, err := natspub.New(tc.cfg)
		require.ErrorContains(t, err, tc.want)
		require.True(t, strings.HasPrefix(err.Error(), "outbox: natspub.New: "), err.Error())
	}
}

// A batch is stored in order, with the outbox id as watermill UUID and Nats-Msg-Id, and the
// metadata as headers, which watermill-nats reads back as they were.
func TestNATSPublishesABatchInOrder(t *testing.T) {
	nc := connect(t)
	js, subject := stream(t, nc, jetstream.StreamConfig{})
	pub := newPublisher(t, natspub.Config{})
	var batch []*message.Message
	for i := range 500 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%7)))
	}
	require.NoError(t, pub.PublishBatch(subject, batch))
	got := read(t, js, subject)
	require.Len(t, got, len(batch))
	for i, m := range got {
		require.Equal(t, batch[i].UUID, m.UUID, "stream order is batch order")
		require.Equal(t, string(batch[i].Payload), string(m.Payload))
		require.Equal(t, batch[i].Metadata, m.Metadata)
	}

	// Published again (a lost acknowledgement, a dispatcher that crashed): acknowledged, and
	// dropped by the stream's duplicate window.
	require.NoError(t, pub.PublishBatch(subject, batch[:100]))
	require.Len(t, read(t, js, subject), len(batch))
}

// The stream has a topic of watermill-nats' AutoProvision: a stream named after the topic.
func TestNATSAutoProvisionCreatesTheStream(t *testing.T) {
	nc := connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	topic := fmt.Sprintf("outbox_test_auto_%d", time.Now().UnixNano())
	t.Cleanup(func() { js.DeleteStream(context.Background(), topic) })
	pub := newPublisher(t, natspub.Config{AutoProvision: true})
	require.NoError(t, pub.PublishBatch(topic, []*message.Message{keyed(1, "a"), keyed(2, "a")}))
	require.Len(t, read(t, js, topic), 2)

	// A topic that cannot name a stream: the operator must create one; the messages wait.
	err = pub.PublishBatch(topic+".x", []*message.Message{keyed(1, "a")})
	require.ErrorContains(t, err, "create a stream that takes subject")
	require.False(t, publisher.IsPermanent(err))
}

// Without a stream for the subject, every message fails, and is retried later: streams are
// often created by the deploy after the one that starts writing.
func TestNATSNoStreamIsRetried(t *testing.T) {
	connect(t)
	pub := newPublisher(t, natspub.Config{})
	batch := []*message.Message{keyed(1, "a"), keyed(2, "b")}
	err := pub.PublishBatch(fmt.Sprintf("outbox_test_nostream_%d", time.Now().UnixNano()), batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 2)
	for _, e := range be.Failed {
		require.False(t, publisher.IsPermanent(e), "%v", e)
		require.ErrorIs(t, e, jetstream.ErrNoStreamResponse)
	}
}

// A message that cannot be sent holds back the later messages of its key, unsent; the other
// keys are published.
func TestNATSFailureHoldsItsKeyOnly(t *testing.T) {
	nc := connect(t)
	js, subject := stream(t, nc, jetstream.StreamConfig{MaxMsgSize: 1000})
	pub := newPublisher(t, natspub.Config{})
	bad := keyed(1, "A")
	bad.Metadata.Set("bad:name", "x") // a header name NATS cannot carry
	large := keyed(4, "B")
	large.Payload = make([]byte, 2000) // over the stream's max_msg_size: refused by the server
	batch := []*message.Message{keyed(0, "A"), bad, keyed(2, "A"), keyed(3, "B"), large, keyed(5, "B"), keyed(6, "C"), keyed(7, "")}
	err := pub.PublishBatch(subject, batch)
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 4, "%v", err)
	require.True(t, publisher.IsPermanent(be.Failed[bad.UUID]), "%v", be.Failed[bad.UUID])
	require.ErrorContains(t, be.Failed[bad.UUID], "bad:name")
	require.ErrorContains(t, be.Failed[batch[2].UUID], `not sent: an earlier message of key "A" failed`)
	require.True(t, publisher.IsPermanent(be.Failed[large.UUID]), "%v", be.Failed[large.UUID])
	require.ErrorContains(t, be.Failed[batch[5].UUID], `an earlier message of key "B" failed`)
	require.False(t, publisher.IsPermanent(be.Failed[batch[5].UUID]))

	var ids []string
	for _, m := range read(t, js, subject) {
		ids = append(ids, m.UUID)
	}
	// B's last message was sent before the server refused the one before it: stored, and
	// reported failed so that it is published again after it (the duplicate window drops it).
	require.Equal(t, []string{batch[0].UUID, batch[3].UUID, batch[5].UUID, batch[6].UUID, batch[7].UUID}, ids)
}

func TestNATSPermanentErrors(t *testing.T) {
	connect(t)
	pub := newPublisher(t, natspub.Config{})
	for _, topic := range []string{"a b", "a..b", ".a", "a.*", "orders.>"} {
		err := pub.PublishBatch(topic, []*message.Message{keyed(1, "")})
		require.Error(t, err, topic)
		require.True(t, publisher.IsPermanent(err), "%s: %v", topic, err)
	}
	_, subject := stream(t, pub.Conn(), jetstream.StreamConfig{})
	huge := keyed(1, "k")
	huge.Payload = make([]byte, pub.Conn().MaxPayload()+1)
	err := pub.PublishBatch(subject, []*message.Message{huge})
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.True(t, publisher.IsPermanent(be.Failed[huge.UUID]), "%v", err)
	require.ErrorIs(t, be.Failed[huge.UUID], natsio.ErrMaxPayload)
	for _, v := range []string{"a\r\nb", " padded", "padded\t"} {
		m := keyed(2, "k")
		m.Metadata.Set("h", v)
		err := pub.PublishBatch(subject, []*message.Message{m})
		require.ErrorAs(t, err, &be)
		require.True(t, publisher.IsPermanent(be.Failed[m.UUID]), "%q: %v", v, err)
	}
}

// New does not wait for a server that is down; publishes fail retryably until it is up.
func TestNATSStartsWhileTheServerIsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	pub := newPublisher(t, natspub.Config{URL: "nats://" + addr, AckTimeout: time.Second})
	err = pub.PublishBatch("orders", []*message.Message{keyed(1, "a"), keyed(2, "a"), keyed(3, "b")})
	var be *publisher.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 3)
	for _, e := range be.Failed {
		require.False(t, publisher.IsPermanent(e), "%v", e)
	}
	require.NoError(t, pub.Close())
	require.ErrorContains(t, pub.PublishBatch("orders", []*message.Message{keyed(1, "a")}), "closed")
}

// A batch costs about one round trip, not one per message: through a link that delays each
// direction by 20 ms, 500 messages one at a time would take 20 s.
func TestNATSBatchIsPipelined(t *testing.T) {
	nc := connect(t)
	js, subject := stream(t, nc, jetstream.StreamConfig{})
	proxy := delayProxy(t, strings.TrimPrefix(natsURL(), "nats://"), 20*time.Millisecond)
	pub := newPublisher(t, natspub.Config{URL: "nats://" + proxy})
	require.NoError(t, pub.PublishBatch(subject, []*message.Message{keyed(-1, "")})) // connected, reply subscription made
	var batch []*message.Message
	for i := range 500 {
		batch = append(batch, keyed(i, fmt.Sprintf("k%d", i%10)))
	}
	start := time.Now()
	require.NoError(t, pub.PublishBatch(subject, batch))
	took := time.Since(start)
	t.Logf("500 messages through a 2 x 20 ms link: %v", took)
	require.Less(t, took, 2*time.Second)
	require.Len(t, read(t, js, subject), 501)
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

// A publisher on a connection it was given leaves the connection open, and nothing of its
// own on it, when it closes.
func TestNATSCloseLeavesAGivenConnection(t *testing.T) {
	nc := connect(t)
	js, subject := stream(t, nc, jetstream.StreamConfig{})
	subs := nc.NumSubscriptions()
	pub := newPublisher(t, natspub.Config{Conn: nc})
	require.NoError(t, pub.PublishBatch(subject, []*message.Message{keyed(1, "a")}))
	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close(), "Close twice")
	require.False(t, nc.IsClosed())
	require.Equal(t, subs, nc.NumSubscriptions(), "the acknowledgements' subscription is gone")
	require.Len(t, read(t, js, subject), 1)
}
