package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/middleware/idempotency"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// The end-to-end and outage tests of the brokers that small deployments run (NATS JetStream,
// Redis Streams), shared by brokers_nats_test.go and brokers_redis_test.go.

// lostAckEvery makes every lostAckEvery-th message's first publish lose its acknowledgement:
// the broker has it, the dispatcher is told it failed and publishes it again, as after a
// connection lost before the answer. That makes the duplicates a consumer must drop.
const lostAckEvery = 40

// lostAcks wraps a publisher, reporting the first publish of every lostAckEvery-th message
// (by write index, the payload) failed after the broker took it.
type lostAcks struct {
	message.Publisher
	mu   sync.Mutex
	lost map[string]bool
	n    atomic.Int64 // acknowledgements lost
}

func newLostAcks(pub message.Publisher) *lostAcks {
	return &lostAcks{Publisher: pub, lost: map[string]bool{}}
}

// loses reports whether m's acknowledgement is to be lost, once.
func (l *lostAcks) loses(m *message.Message) bool {
	i, err := strconv.Atoi(string(m.Payload))
	if err != nil || i%lostAckEvery != lostAckEvery-1 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost[m.UUID] {
		return false
	}
	l.lost[m.UUID] = true
	l.n.Add(1)
	return true
}

var errAckLost = errors.New("test: acknowledgement lost")

func (l *lostAcks) Publish(topic string, msgs ...*message.Message) error {
	if err := l.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		if l.loses(m) {
			return errAckLost
		}
	}
	return nil
}

// lostBatchAcks is lostAcks for a publisher.BatchPublisher: a message whose acknowledgement
// is lost fails in a *publisher.BatchError, with the later messages of its key in the batch,
// as the batch contract wants.
type lostBatchAcks struct{ *lostAcks }

func (l lostBatchAcks) PublishBatch(topic string, msgs []*message.Message) error {
	err := l.Publisher.(publisher.BatchPublisher).PublishBatch(topic, msgs)
	failed := map[string]error{}
	var be *publisher.BatchError
	if errors.As(err, &be) {
		failed = be.Failed
	} else if err != nil {
		return err
	}
	lostKeys := map[string]bool{}
	for _, m := range msgs {
		key := m.Metadata.Get(publisher.MetadataKey)
		if _, ok := failed[m.UUID]; ok {
			lostKeys[key] = true
			continue
		}
		if lostKeys[key] || l.loses(m) {
			failed[m.UUID] = errAckLost
			lostKeys[key] = true
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &publisher.BatchError{Failed: failed}
}

// withLostAcks wraps pub in lostAcks, keeping it a BatchPublisher when it is one.
func withLostAcks(pub message.Publisher) (message.Publisher, *lostAcks) {
	l := newLostAcks(pub)
	if _, ok := pub.(publisher.BatchPublisher); ok {
		return lostBatchAcks{l}, l
	}
	return l, l
}

// inboxResult is what a consumer behind the idempotency middleware saw.
type inboxResult struct {
	processed  []*message.Message // handed to the handler, in arrival order
	deliveries int                // read from the broker, duplicates included
}

// requireEndToEndThroughInbox writes brokerMessages messages over brokerKeys keys (payload =
// write index) while a dispatcher publishes them through pub, which loses some
// acknowledgements (see lostAcks), and consumes topic from sub with a watermill router whose
// handler sits behind the idempotency middleware. It checks that each message was processed
// exactly once, with its identity and headers, each key in write order, and that the outbox
// marked every message delivered; it returns what the consumer saw, for the broker's own
// checks on duplicates.
func requireEndToEndThroughInbox(t *testing.T, f *fixture, pub message.Publisher, topic string, sub message.Subscriber) inboxResult {
	t.Helper()
	ctx := f.ctx
	db := bun.NewDB(dbtest.SQLite(t), sqlitedialect.New())
	_, err := db.ExecContext(ctx, "CREATE TABLE effects (message_id TEXT NOT NULL)")
	require.NoError(t, err)
	inbox, err := idempotency.New(db, idempotency.Config{Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, inbox.Migrate(ctx))

	var (
		mu        sync.Mutex
		processed []*message.Message
		delivered atomic.Int64
	)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddConsumerHandler("effects", topic, sub, func(msg *message.Message) error {
		tx, ok := idempotency.TxFromContext(msg.Context())
		if !ok {
			return errors.New("no inbox transaction in the handler's context")
		}
		if _, err := tx.ExecContext(msg.Context(), "INSERT INTO effects VALUES (?)", msg.UUID); err != nil {
			return err
		}
		mu.Lock()
		processed = append(processed, msg)
		mu.Unlock()
		return nil
	})
	counting := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			delivered.Add(1)
			return h(msg)
		}
	}
	router.AddMiddleware(counting, inbox.Middleware)
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(context.WithoutCancel(ctx)) }()
	t.Cleanup(func() {
		router.Close()
		<-routerDone
	})
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("router did not start")
	}

	wrapped, lost := withLostAcks(pub)
	d := f.start(t, wrapped, fast(dispatcher.Config{}))
	var ids []string
	for batch := 0; batch < brokerMessages; batch += 100 {
		var in []store.Message
		for i := batch; i < batch+100; i++ {
			in = append(in, store.Message{Topic: topic, Key: brokerKey(i), Payload: []byte(strconv.Itoa(i)),
				Headers: map[string]string{"content-type": "text/plain", "seq": strconv.Itoa(i)}})
		}
		ids = append(ids, f.write(t, in...)...)
	}
	f.waitDelivered(t, brokerMessages)
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(processed)
	}
	require.Eventually(t, func() bool { return count() >= brokerMessages }, time.Minute, 10*time.Millisecond,
		"every message processed")
	// The resent copies follow their originals closely: give the last ones a moment.
	require.Eventually(t, func() bool { return delivered.Load() >= int64(brokerMessages) }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, router.Close())

	mu.Lock()
	got := append([]*message.Message(nil), processed...)
	mu.Unlock()
	require.Len(t, got, brokerMessages, "each message processed exactly once")
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
	var effects, distinct int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*), count(DISTINCT message_id) FROM effects").Scan(&effects, &distinct))
	require.Equal(t, brokerMessages, distinct, "every message took effect")
	require.Equal(t, brokerMessages, effects, "no message took effect twice")
	require.Equal(t, int64(brokerMessages), d.Stats().Published)
	require.Zero(t, d.Stats().Parked)
	require.Positive(t, lost.n.Load())
	require.GreaterOrEqual(t, d.Stats().Failed, lost.n.Load(), "each lost acknowledgement failed an attempt")
	res := inboxResult{processed: got, deliveries: int(delivered.Load())}
	t.Logf("%d messages, %d acknowledgements lost and published again; the consumer read %d deliveries, %d duplicates dropped by the inbox",
		brokerMessages, lost.n.Load(), res.deliveries, res.deliveries-brokerMessages)
	return res
}

// privateBroker is a broker process of the test's own, on a port of its own, which the
// outage test stops and starts without touching the shared services.
type privateBroker struct {
	name string
	port int
	args []string // the command line, the binary first
	cmd  *exec.Cmd
	log  string
}

// startPrivateBroker starts the broker binary (found on PATH or in /usr/sbin or /usr/bin),
// with args made by argsFor from its port and a data directory of its own. Without the
// binary the test is skipped, except under CI, where .ci/services installs it.
func startPrivateBroker(t *testing.T, binary string, argsFor func(port int, dir string) []string) *privateBroker {
	t.Helper()
	path, err := exec.LookPath(binary)
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		if err == nil {
			break
		}
		path, err = exec.LookPath(filepath.Join(dir, binary))
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed under CI (.ci/services installs it): %v", binary, err)
		}
		t.Skipf("%s is not installed; skipping (.ci/services installs it): %v", binary, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	dir := t.TempDir()
	b := &privateBroker{name: binary, port: port, args: append([]string{path}, argsFor(port, dir)...),
		log: filepath.Join(dir, "broker.log")}
	b.start(t)
	t.Cleanup(func() { b.stop(t) })
	return b
}

func (b *privateBroker) addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

// start starts the process and waits for its port.
func (b *privateBroker) start(t *testing.T) {
	t.Helper()
	out, err := os.OpenFile(b.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	defer out.Close()
	b.cmd = exec.Command(b.args[0], b.args[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = out, out
	require.NoError(t, b.cmd.Start())
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", b.addr(), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 20*time.Second, 20*time.Millisecond, "%s did not open %s (log: %s)", b.name, b.addr(), b.log)
}

// stop stops the process as a service manager would (SIGTERM: it shuts down cleanly,
// keeping what it acknowledged), killing it if it takes over 10 s.
func (b *privateBroker) stop(t *testing.T) {
	t.Helper()
	if b.cmd == nil {
		return
	}
	cmd := b.cmd
	b.cmd = nil
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// outageBroker is what the outage test needs of a broker: a publisher to its private
// process, and the messages of instanceTopic read back in stream order.
type outageBroker struct {
	server    *privateBroker
	publisher func(t *testing.T) message.Publisher
	readAll   func(t *testing.T) []*message.Message
}

// requireOutageLosesNothing is TestBrokerOutageLosesNothingAndResumes for a broker process of
// the test's own: it is stopped for 10 s while the application keeps writing, then started
// again on its data; the dispatcher resumes by itself within its retry cap, every message is
// in the broker, each key's first deliveries in write order, and a consumer behind the
// idempotency middleware applies each once.
func requireOutageLosesNothing(t *testing.T, b outageBroker) {
	const (
		n        = 2000
		outage   = 10 * time.Second
		retryCap = time.Second
	)
	shared := sharedSQLite(t)
	db, st := shared.open(t, shared.dsn, shared.table)
	t.Cleanup(func() { db.Close() })
	require.NoError(t, st.Migrate(context.Background()))
	pub := b.publisher(t)
	d, err := dispatcher.New(st, pub, dispatcher.Config{RetryInitial: 100 * time.Millisecond, RetryMax: retryCap, MaxAttempts: 1 << 20, Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	defer d.Stop(context.Background())

	written := make(chan error, 1)
	go func() { written <- writeSteadily(db, st, n, 10, 30*time.Millisecond) }()
	require.Eventually(t, func() bool { return d.Stats().Published > 100 }, 30*time.Second, 5*time.Millisecond)

	b.server.stop(t)
	time.Sleep(outage) // the outage itself
	require.Positive(t, d.Stats().Failed, "publishing failed while the broker was down")
	before := d.Stats().Published
	b.server.start(t)
	back := time.Now()
	require.Eventually(t, func() bool { return d.Stats().Published > before }, 30*time.Second, 5*time.Millisecond)
	resumed := time.Since(back)
	require.NoError(t, <-written, "the application's writes never waited for the broker")
	waitAllDelivered(t, st, n)

	msgs := b.readAll(t)
	seen := map[string]bool{}
	last := map[string]int{}
	var deliveries []delivery
	dups, inversions := 0, 0
	for _, m := range msgs {
		deliveries = append(deliveries, delivery{id: m.UUID, payload: m.Payload})
		if seen[m.UUID] {
			dups++
			continue
		}
		seen[m.UUID] = true
		i, err := strconv.Atoi(string(m.Payload))
		require.NoError(t, err)
		key := m.Metadata.Get(publisher.MetadataKey)
		if prev, ok := last[key]; ok && prev > i {
			inversions++
		}
		last[key] = i
	}
	require.Len(t, seen, n, "every committed message is in the broker: 0 lost")
	requireAppliedOnce(t, deliveries)
	t.Logf("%s: outage %v: resumed %v after the broker came back; %d failed attempts, %d duplicates in the broker, 0 lost",
		b.server.name, outage, resumed.Round(time.Millisecond), d.Stats().Failed, dups)
	require.Zero(t, inversions, "each key's first deliveries in write order")
	require.Less(t, resumed, 10*time.Second, "resumes by itself, within a few retry caps")
	require.Zero(t, d.Stats().Parked)
}
