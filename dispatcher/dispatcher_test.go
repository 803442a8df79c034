package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// sarama starts one process-wide metrics goroutine that never ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

type fixture struct {
	st  dbtest.Store
	pub *outboxtest.Publisher
	ctx context.Context
}

func setup(t *testing.T) *fixture {
	t.Helper()
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	require.NoError(t, st.Migrate(ctx))
	return &fixture{st: st, pub: outboxtest.NewPublisher(), ctx: ctx}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fast is a config for tests: short retries, quiet logs.
func fast(cfg dispatcher.Config) dispatcher.Config {
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial = time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 5 * time.Millisecond
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	cfg.Logger = quiet()
	return cfg
}

func (f *fixture) write(t *testing.T, msgs ...store.Message) []string {
	t.Helper()
	for i := range msgs {
		if msgs[i].ID == "" {
			msgs[i].ID = store.NewID()
		}
	}
	tx, err := f.st.DB().BeginTx(f.ctx, nil)
	require.NoError(t, err)
	require.NoError(t, f.st.Write(f.ctx, tx, msgs...))
	require.NoError(t, tx.Commit())
	ids := make([]string, len(msgs))
	for i := range msgs {
		ids[i] = msgs[i].ID
	}
	return ids
}

func (f *fixture) start(t *testing.T, pub message.Publisher, cfg dispatcher.Config) *dispatcher.Dispatcher {
	t.Helper()
	d, err := dispatcher.New(f.st, pub, cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, d.Stop(ctx))
	})
	return d
}

func (f *fixture) count(t *testing.T, state store.State) int {
	t.Helper()
	res, err := f.st.List(f.ctx, &store.ListParams{State: state, Limit: 1 << 20})
	require.NoError(t, err)
	return len(res.Messages)
}

func (f *fixture) waitDelivered(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return f.count(t, store.Delivered) == n }, 30*time.Second, 5*time.Millisecond,
		"want %d delivered", n)
}

func TestPublishesEveryMessageWithItsIdentity(t *testing.T) {
	f := setup(t)
	var in []store.Message
	for i := range 250 {
		in = append(in, store.Message{Topic: "payments", Key: fmt.Sprintf("p-%d", i%17), Payload: []byte(strconv.Itoa(i)),
			Headers: map[string]string{"content-type": "text/plain"}})
	}
	in = append(in, store.Message{Topic: "audit", Payload: []byte("no key")})
	ids := f.write(t, in...)
	d := f.start(t, f.pub, fast(dispatcher.Config{BatchSize: 40}))
	f.waitDelivered(t, len(in))

	got := f.pub.Messages("")
	require.Len(t, got, len(in), "each message published once")
	byID := map[string]*message.Message{}
	for _, m := range got {
		byID[m.UUID] = m
	}
	for i, id := range ids {
		m := byID[id]
		require.NotNil(t, m, "message %d published", i)
		require.Equal(t, string(in[i].Payload), string(m.Payload))
		require.Equal(t, id, m.Metadata.Get(publisher.MetadataID))
		require.Equal(t, in[i].Key, m.Metadata.Get(publisher.MetadataKey))
		created, err := time.Parse(time.RFC3339Nano, m.Metadata.Get(publisher.MetadataCreatedAt))
		require.NoError(t, err)
		require.WithinDuration(t, time.Now(), created, time.Minute)
		if in[i].Headers != nil {
			require.Equal(t, "text/plain", m.Metadata.Get("content-type"))
		}
		require.NotNil(t, m.Context())
	}
	require.Len(t, f.pub.Messages("audit"), 1)
	require.Equal(t, dispatcher.Stats{Published: int64(len(in))}, d.Stats())
}

// 10% of publishes fail at random across 1,000 keys, through per-message publishing and
// through a batch publisher: everything arrives once, and each key's first deliveries follow
// write order.
func TestOrderPerKeyUnderRandomFailures(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			f := setup(t)
			const n, keys = 3000, 1000
			var in []store.Message
			for i := range n {
				in = append(in, store.Message{Topic: "t", Key: fmt.Sprintf("k%d", i%keys), Payload: []byte(strconv.Itoa(i))})
			}
			f.write(t, in...)
			var rngMu sync.Mutex
			rng := rand.New(rand.NewPCG(1, 2))
			f.pub.Fail = func(string, *message.Message) error {
				rngMu.Lock()
				defer rngMu.Unlock()
				if rng.IntN(10) == 0 {
					return errors.New("injected failure")
				}
				return nil
			}
			var pub message.Publisher = f.pub
			if batch {
				pub = &batchPublisher{Publisher: f.pub}
			}
			d := f.start(t, pub, fast(dispatcher.Config{MaxAttempts: 1000}))
			f.waitDelivered(t, n)

			got := f.pub.Messages("t")
			seen := map[string]bool{}
			for _, m := range got {
				require.False(t, seen[m.UUID], "published twice without a crash: %s", m.UUID)
				seen[m.UUID] = true
			}
			require.Len(t, seen, n)
			requireOrderPerKey(t, got)
			require.Positive(t, d.Stats().Failed)
			require.Zero(t, d.Stats().Parked)
		})
	}
}

func TestFailingKeyHoldsBackOnlyItsOwnKey(t *testing.T) {
	f := setup(t)
	var brokenA atomic.Bool
	brokenA.Store(true)
	f.pub.Fail = func(_ string, m *message.Message) error {
		if m.Metadata.Get(publisher.MetadataKey) == "A" && brokenA.Load() {
			return errors.New("A is broken")
		}
		return nil
	}
	ids := f.write(t,
		store.Message{Topic: "t", Key: "A", Payload: []byte("a1")},
		store.Message{Topic: "t", Key: "B", Payload: []byte("b1")},
		store.Message{Topic: "t", Key: "A", Payload: []byte("a2")},
		store.Message{Topic: "t", Payload: []byte("none")},
		store.Message{Topic: "t", Key: "B", Payload: []byte("b2")},
	)
	f.start(t, f.pub, fast(dispatcher.Config{MaxAttempts: 1000, RetryInitial: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond}))
	f.waitDelivered(t, 3) // b1, none, b2
	var a *store.ListResult
	require.Eventually(t, func() bool { // a1's failures are recorded after the batch's deliveries
		var err error
		a, err = f.st.List(f.ctx, &store.ListParams{Key: "A", State: store.Pending})
		require.NoError(t, err)
		return a.Messages[0].Attempts >= 2
	}, 30*time.Second, 5*time.Millisecond)
	require.Len(t, a.Messages, 2, "A's messages wait")
	require.Zero(t, a.Messages[1].Attempts, "a2 is never tried while a1 fails")

	brokenA.Store(false)
	f.waitDelivered(t, 5)
	var order []string
	for _, m := range f.pub.Messages("t") {
		if m.Metadata.Get(publisher.MetadataKey) == "A" {
			order = append(order, m.UUID)
		}
	}
	require.Equal(t, []string{ids[0], ids[2]}, order)
}

func TestParksAfterMaxAttemptsAndKeyMovesOn(t *testing.T) {
	f := setup(t)
	var poisonAttempts atomic.Int32
	f.pub.Fail = func(_ string, m *message.Message) error {
		if string(m.Payload) == "poison" {
			poisonAttempts.Add(1)
			return errors.New("cannot encode poison")
		}
		return nil
	}
	ids := f.write(t,
		store.Message{Topic: "t", Key: "K", Payload: []byte("poison")},
		store.Message{Topic: "t", Key: "K", Payload: []byte("after")},
	)
	d := f.start(t, f.pub, fast(dispatcher.Config{MaxAttempts: 3}))
	f.waitDelivered(t, 1)
	require.Equal(t, int32(3), poisonAttempts.Load())
	parked, err := f.st.List(f.ctx, &store.ListParams{State: store.Parked})
	require.NoError(t, err)
	require.Len(t, parked.Messages, 1)
	require.Equal(t, ids[0], parked.Messages[0].ID)
	require.Equal(t, 3, parked.Messages[0].Attempts)
	require.Contains(t, parked.Messages[0].LastError, "cannot encode poison")
	require.Equal(t, ids[1], f.pub.Messages("t")[0].UUID)
	require.Equal(t, dispatcher.Stats{Published: 1, Failed: 3, Parked: 1}, d.Stats())
}

func TestPanickingPublisherCountsAsFailure(t *testing.T) {
	f := setup(t)
	f.pub.Fail = func(string, *message.Message) error { panic("publisher bug") }
	f.write(t, store.Message{Topic: "t", Payload: []byte("x")})
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{MaxAttempts: 1}))
	require.NoError(t, err)
	n, err := d.Drain(f.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	parked, err := f.st.List(f.ctx, &store.ListParams{State: store.Parked})
	require.NoError(t, err)
	require.Len(t, parked.Messages, 1)
	require.Contains(t, parked.Messages[0].LastError, "publisher panicked: publisher bug")
}

// The retry time is kept in the store: a new dispatcher does not retry early.
func TestRetryTimeSurvivesRestart(t *testing.T) {
	f := setup(t)
	f.write(t, store.Message{Topic: "t", Key: "k", Payload: []byte("x")})
	failing := outboxtest.NewPublisher()
	failing.Fail = func(string, *message.Message) error { return errors.New("broker down") }
	first, err := dispatcher.New(f.st, failing, dispatcher.Config{RetryInitial: time.Hour, RetryMax: 2 * time.Hour, Logger: quiet()})
	require.NoError(t, err)
	_, err = first.Drain(f.ctx)
	require.NoError(t, err)

	pending, err := f.st.List(f.ctx, &store.ListParams{State: store.Pending})
	require.NoError(t, err)
	require.Len(t, pending.Messages, 1)
	m := pending.Messages[0]
	require.Equal(t, 1, m.Attempts)
	require.Equal(t, "broker down", m.LastError)
	// One hour with 50% jitter.
	require.WithinRange(t, m.NextAttemptAt, time.Now().Add(29*time.Minute), time.Now().Add(91*time.Minute))

	second, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	n, err := second.Drain(f.ctx)
	require.NoError(t, err)
	require.Zero(t, n, "a restarted dispatcher waits for the persisted retry time")
	require.Empty(t, f.pub.Messages(""))
}

func TestRetryBackoffGrowsWithJitter(t *testing.T) {
	f := setup(t)
	f.write(t, store.Message{Topic: "t", Key: "k", Payload: []byte("x")})
	f.pub.Fail = func(string, *message.Message) error { return errors.New("no") }
	d, err := dispatcher.New(f.st, f.pub, dispatcher.Config{RetryInitial: time.Minute, RetryMax: 10 * time.Minute, Logger: quiet()})
	require.NoError(t, err)
	db := f.st.DB()
	for attempt := 1; attempt <= 6; attempt++ {
		// Make the message due again, keeping its attempt count.
		_, err := db.ExecContext(f.ctx, `UPDATE outbox SET next_attempt_at = 0`)
		require.NoError(t, err)
		before := time.Now()
		_, err = d.Drain(f.ctx)
		require.NoError(t, err)
		res, err := f.st.List(f.ctx, &store.ListParams{})
		require.NoError(t, err)
		m := res.Messages[0]
		require.Equal(t, attempt, m.Attempts)
		base := min(time.Minute<<(attempt-1), 10*time.Minute)
		wait := m.NextAttemptAt.Sub(before)
		require.GreaterOrEqual(t, wait, base/2-time.Second, "attempt %d", attempt)
		require.LessOrEqual(t, wait, base*3/2+time.Second, "attempt %d", attempt)
	}
}

// With an hour-long idle poll, only the wake-up from a write can deliver a message quickly.
func TestWriteWakesIdleDispatcher(t *testing.T) {
	f := setup(t)
	claims := &countingStore{Store: f.st}
	d, err := dispatcher.New(claims, f.pub, dispatcher.Config{PollInterval: time.Hour, Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	defer d.Stop(context.Background())

	// Idle waits double from 5 ms: after the 9th empty claim the dispatcher sleeps 1.28 s.
	require.Eventually(t, func() bool { return claims.n.Load() >= 9 }, 30*time.Second, time.Millisecond)
	start := time.Now()
	f.write(t, store.Message{Topic: "t", Payload: []byte("wake up")})
	require.Eventually(t, func() bool { return len(f.pub.Messages("t")) == 1 }, 800*time.Millisecond, time.Millisecond,
		"a write must wake the idle dispatcher")
	t.Logf("write-to-publish while idle: %v", time.Since(start))
}

type countingStore struct {
	dbtest.Store
	n atomic.Int64
}

func (c *countingStore) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	c.n.Add(1)
	return c.Store.Claim(ctx, p)
}

// blockingPublisher holds every publish until released or until the message's context ends.
type blockingPublisher struct {
	inFlight atomic.Int32
	release  chan struct{}
	*outboxtest.Publisher
}

func (b *blockingPublisher) Publish(topic string, msgs ...*message.Message) error {
	b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	select {
	case <-b.release:
		return b.Publisher.Publish(topic, msgs...)
	case <-msgs[0].Context().Done():
		return msgs[0].Context().Err()
	}
}

// Stop returns only once the messages in flight are published and recorded.
func TestStopWaitsForInFlightMessages(t *testing.T) {
	f := setup(t)
	pub := &blockingPublisher{release: make(chan struct{}), Publisher: f.pub}
	for i := range 5 {
		f.write(t, store.Message{Topic: "t", Key: strconv.Itoa(i), Payload: []byte("x")})
	}
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	require.Eventually(t, func() bool { return pub.inFlight.Load() == 5 }, 10*time.Second, time.Millisecond)

	// What Stop left behind is read the moment it returns, by the goroutine that called it.
	type stopped struct {
		err                 error
		inFlight, delivered int
	}
	done := make(chan stopped, 1)
	go func() {
		err := d.Stop(context.Background())
		res, lerr := f.st.List(f.ctx, &store.ListParams{State: store.Delivered, Limit: 100})
		if lerr != nil {
			err = errors.Join(err, lerr)
			res = &store.ListResult{}
		}
		done <- stopped{err: err, inFlight: int(pub.inFlight.Load()), delivered: len(res.Messages)}
	}()
	// Once the dispatcher reports it stopped, Stop is under way: a Stop that did not wait for
	// the held publishes would return now.
	require.Eventually(t, func() bool { return d.Mode() == dispatcher.ModeStopped }, 10*time.Second, time.Millisecond,
		"Stop did not take effect")
	require.Never(t, func() bool { return len(done) > 0 }, 100*time.Millisecond, time.Millisecond,
		"Stop returned with messages in flight")
	require.EqualValues(t, 5, pub.inFlight.Load(), "Stop abandoned the publishes in flight")
	close(pub.release)
	got := <-done
	require.NoError(t, got.err)
	require.Zero(t, got.inFlight, "a publish was still in flight when Stop returned")
	require.Equal(t, 5, got.delivered, "in-flight messages were marked before Stop returned")

	f.write(t, store.Message{Topic: "t", Payload: []byte("after stop")})
	require.Equal(t, 1, f.count(t, store.Pending), "a stopped dispatcher claims nothing")
	require.NoError(t, d.Stop(context.Background()), "Stop again is a no-op")
}

func TestStopDeadlineAbandonsInFlightAndRestartDelivers(t *testing.T) {
	f := setup(t)
	pub := &blockingPublisher{release: make(chan struct{}), Publisher: f.pub}
	f.write(t, store.Message{Topic: "t", Key: "a", Payload: []byte("1")}, store.Message{Topic: "t", Key: "a", Payload: []byte("2")})
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{Lease: 300 * time.Millisecond}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	require.Eventually(t, func() bool { return pub.inFlight.Load() == 1 }, 10*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	require.ErrorIs(t, d.Stop(ctx), context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second, "Stop honours its deadline")
	require.Eventually(t, func() bool { return pub.inFlight.Load() == 0 }, 10*time.Second, time.Millisecond)
	require.Zero(t, f.count(t, store.Delivered))

	// A new dispatcher with a working publisher delivers both, in order.
	f.start(t, f.pub, fast(dispatcher.Config{}))
	f.waitDelivered(t, 2)
	got := f.pub.Messages("t")
	require.Equal(t, "1", string(got[0].Payload))
	require.Equal(t, "2", string(got[1].Payload))
}

func TestStartAndStopAreIdempotentAndRestartable(t *testing.T) {
	f := setup(t)
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	require.NoError(t, d.Stop(f.ctx), "Stop before Start")
	require.NoError(t, d.Start(f.ctx))
	require.NoError(t, d.Start(f.ctx))
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { require.NoError(t, d.Stop(f.ctx)) })
	}
	wg.Wait()

	require.NoError(t, d.Start(f.ctx), "start again after stop")
	f.write(t, store.Message{Topic: "t", Payload: []byte("x")})
	f.waitDelivered(t, 1)
	require.NoError(t, d.Stop(f.ctx))
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	f := setup(t)
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	f.write(t, store.Message{Topic: "t", Payload: []byte("x")})
	f.waitDelivered(t, 1)
	cancel()
	require.NoError(t, <-done)
}

func TestStartRefusesUnmigratedStore(t *testing.T) {
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "empty.db"))
	require.NoError(t, err)
	defer db.Close()
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	d, err := dispatcher.New(st, outboxtest.NewPublisher(), dispatcher.Config{Logger: quiet()})
	require.NoError(t, err)
	require.ErrorIs(t, d.Start(context.Background()), store.ErrNotMigrated)
}

func TestConfigValidation(t *testing.T) {
	f := setup(t)
	_, err := dispatcher.New(nil, f.pub, dispatcher.Config{})
	require.ErrorContains(t, err, "store is nil")
	_, err = dispatcher.New(f.st, nil, dispatcher.Config{})
	require.ErrorContains(t, err, "publisher is nil")
	for field, cfg := range map[string]dispatcher.Config{
		"BatchSize":    {BatchSize: -1},
		"Concurrency":  {Concurrency: -1},
		"MaxAttempts":  {MaxAttempts: -1},
		"Lease":        {Lease: -time.Second},
		"RetryInitial": {RetryInitial: -time.Second},
		"PollInterval": {PollInterval: -time.Second},
		"RetryMax":     {RetryInitial: time.Hour, RetryMax: time.Minute},
		"Workers":      {Workers: -1},
	} {
		_, err := dispatcher.New(f.st, f.pub, cfg)
		require.ErrorContains(t, err, "Config."+field, field)
	}
}

// Several workers in one dispatcher keep each key's order, as several dispatchers do.
func TestWorkersKeepOrderPerKey(t *testing.T) {
	f := setup(t)
	const n, keys = 2000, 200
	var in []store.Message
	for i := range n {
		in = append(in, store.Message{Topic: "t", Key: fmt.Sprintf("k%d", i%keys), Payload: []byte(strconv.Itoa(i))})
	}
	f.write(t, in...)
	f.start(t, f.pub, fast(dispatcher.Config{Workers: 3, BatchSize: 40, Concurrency: 8}))
	f.waitDelivered(t, n)
	last := map[string]int{}
	require.Len(t, f.pub.Messages("t"), n)
	for _, m := range f.pub.Messages("t") {
		i, err := strconv.Atoi(string(m.Payload))
		require.NoError(t, err)
		key := m.Metadata.Get(publisher.MetadataKey)
		if prev, ok := last[key]; ok {
			require.Less(t, prev, i, "key %s out of order", key)
		}
		last[key] = i
	}
}

// Only one worker polls an idle outbox; the others join when a claim comes back full.
func TestIdleWorkersRestUntilABacklog(t *testing.T) {
	f := setup(t)
	claims := &countingStore{Store: f.st}
	pub := &overlapPublisher{Publisher: f.pub}
	const poll, window = 20 * time.Millisecond, 25
	d, err := dispatcher.New(claims, pub, fast(dispatcher.Config{Workers: 4, BatchSize: 10, Concurrency: 1, PollInterval: poll}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	defer d.Stop(context.Background())
	time.Sleep(10 * poll) // the idle waits grow to PollInterval
	before := claims.n.Load()
	time.Sleep(window * poll)
	idle := claims.n.Load() - before
	t.Logf("%d claims in %d poll intervals", idle, window)
	// Four polling workers would claim about 4 x window times; late timers only claim less.
	require.LessOrEqual(t, idle, int64(2*window), "an idle outbox is polled by one worker")

	var in []store.Message
	for i := range 200 {
		in = append(in, store.Message{Topic: "t", Key: strconv.Itoa(i), Payload: []byte("x")})
	}
	f.write(t, in...)
	f.waitDelivered(t, len(in))
	t.Logf("batches published at once: %d", pub.most.Load())
	require.GreaterOrEqual(t, pub.most.Load(), int32(2), "a backlog brings the resting workers in")
}

// overlapPublisher records how many publishes run at once.
type overlapPublisher struct {
	*outboxtest.Publisher
	now, most atomic.Int32
}

func (p *overlapPublisher) Publish(topic string, msgs ...*message.Message) error {
	n := p.now.Add(1)
	defer p.now.Add(-1)
	for m := p.most.Load(); n > m && !p.most.CompareAndSwap(m, n); m = p.most.Load() {
	}
	time.Sleep(time.Millisecond)
	return p.Publisher.Publish(topic, msgs...)
}

func TestStartPurgesDeliveredPastRetention(t *testing.T) {
	f := setup(t)
	f.write(t, store.Message{Topic: "t", Payload: []byte("1")}, store.Message{Topic: "t", Payload: []byte("2")})
	d, err := dispatcher.New(f.st, f.pub, fast(dispatcher.Config{Retention: -1}))
	require.NoError(t, err)
	_, err = d.Drain(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, f.count(t, store.Delivered))

	kept := f.start(t, f.pub, fast(dispatcher.Config{Retention: -1}))
	require.NoError(t, kept.Stop(f.ctx))
	require.Equal(t, 2, f.count(t, store.Delivered), "a negative retention keeps delivered messages")

	f.start(t, f.pub, fast(dispatcher.Config{Retention: time.Millisecond}))
	require.Eventually(t, func() bool { return f.count(t, store.Delivered) == 0 }, 10*time.Second, 5*time.Millisecond)
}

// stubbornPublisher ignores cancellation: it returns only when released.
type stubbornPublisher struct {
	inFlight atomic.Int32
	release  chan struct{}
	*outboxtest.Publisher
}

func (p *stubbornPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	<-p.release
	return p.Publisher.Publish(topic, msgs...)
}

// A Stop that ran out of time leaves the dispatcher stopping until its publisher returns:
// Start says so instead of pretending it runs, and works again afterwards.
func TestStartWhileStillStopping(t *testing.T) {
	f := setup(t)
	pub := &stubbornPublisher{release: make(chan struct{}), Publisher: f.pub}
	f.write(t, store.Message{Topic: "t", Payload: []byte("1")})
	d, err := dispatcher.New(f.st, pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	require.Eventually(t, func() bool { return pub.inFlight.Load() == 1 }, 10*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(f.ctx, 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, d.Stop(ctx), context.DeadlineExceeded)
	require.ErrorContains(t, d.Start(f.ctx), "still stopping")

	close(pub.release)
	require.Eventually(t, func() bool { return d.Start(f.ctx) == nil }, 10*time.Second, time.Millisecond)
	f.waitDelivered(t, 1)
	require.NoError(t, d.Stop(f.ctx))
}

// lostClaimStore makes its first claim take effect and then fail, as a claim does when its
// connection drops, or its context ends, as it commits.
type lostClaimStore struct {
	dbtest.Store
	lost atomic.Bool
}

func (s *lostClaimStore) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	res, err := s.Store.Claim(ctx, p)
	if err == nil && len(res.Messages) > 0 && s.lost.CompareAndSwap(false, true) {
		return nil, errors.New("connection lost after the claim committed")
	}
	return res, err
}

// A claim that took effect although it failed is given back at once, not after its lease.
func TestAFailedClaimGivesBackWhatItTook(t *testing.T) {
	f := setup(t)
	st := &lostClaimStore{Store: f.st}
	f.write(t, store.Message{Topic: "t", Key: "k", Payload: []byte("x")})
	d, err := dispatcher.New(st, f.pub, fast(dispatcher.Config{Lease: time.Hour}))
	require.NoError(t, err)
	require.NoError(t, d.Start(f.ctx))
	defer d.Stop(context.Background())
	f.waitDelivered(t, 1)
	require.True(t, st.lost.Load())
	require.Len(t, f.pub.Messages("t"), 1)
}
