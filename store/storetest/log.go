package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// LogHarness is one fresh, migrated, empty outbox whose engine reads the database's change
// log (a [store.LogReader]).
type LogHarness struct {
	Harness
	// Another is the same outbox as another instance sees it, through a database handle of
	// its own: the log reader's standby.
	Another func(t *testing.T) store.Engine
	// Position is where the log reader would resume, in the store's own terms (a replication
	// slot's confirmed position, a stored binlog position), or empty when there is none:
	// compared, never read.
	Position func(t *testing.T) string
	// Interrupt ends the server sessions of the running log reader, as a network fault or a
	// server restart would (Postgres: terminate the slot's walsender; MariaDB: kill the
	// binlog dump or the lock's session). A scenario may call it more than once: a store
	// whose reader holds more than one session may end another one at each call.
	Interrupt func(t *testing.T)
	// LoseLog loses the position the log reader resumes from, while no reader runs, as an
	// operator or the server would (Postgres: drop the slot; MariaDB: a stored position the
	// binlog no longer holds, as after a purge).
	LoseLog func(t *testing.T)
}

// RunLog runs every log reader scenario against outboxes made by newHarness, which is called
// once per subtest and must return an outbox of its own.
func RunLog(t *testing.T, newHarness func(t *testing.T) LogHarness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h LogHarness)
	}{
		{"DeliversInCommitOrderAndMarks", testLogDelivers},
		{"ResumesWhereItStopped", testLogResumes},
		{"StandbyTakesOver", testLogStandby},
		{"CutsTransactionsLargerThanABatch", testLogLargeTransaction},
		{"ResumesAfterItsConnectionIsKilled", testLogInterrupted},
		{"StartsAgainWhenItsPositionIsLost", testLogLost},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newHarness(t))
		})
	}
}

// logConsumer records what a log reader hands it, and acknowledges everything.
type logConsumer struct {
	batch int           // the consumer's batch size; 0 for the default
	pause time.Duration // per Deliver call

	mu       sync.Mutex
	sizes    []int // of each Deliver call
	got      []string
	statuses []store.LogStatus
}

func (c *logConsumer) consumer() LogConsumer {
	return LogConsumer{
		BatchSize: c.batch,
		Deliver: func(_ context.Context, msgs []store.ClaimedMessage) *store.LogOutcome {
			c.mu.Lock()
			pause := c.pause
			c.mu.Unlock()
			time.Sleep(pause)
			c.mu.Lock()
			defer c.mu.Unlock()
			c.sizes = append(c.sizes, len(msgs))
			out := &store.LogOutcome{}
			for _, m := range msgs {
				c.got = append(c.got, m.ID)
				out.Delivered = append(out.Delivered, m.ID)
			}
			return out
		},
		Status: func(s store.LogStatus) {
			c.mu.Lock()
			c.statuses = append(c.statuses, s)
			c.mu.Unlock()
		},
	}
}

func (c *logConsumer) delivered() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

// status is the reader's last status, and whether it reported one.
func (c *logConsumer) status() (store.LogStatus, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.statuses) == 0 {
		return store.LogStatus{}, false
	}
	return c.statuses[len(c.statuses)-1], true
}

func (c *logConsumer) reading() bool {
	s, ok := c.status()
	return ok && s.Reading
}

// readingReported reports whether the reader ever said that it reads.
func (c *logConsumer) readingReported() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.statuses {
		if s.Reading {
			return true
		}
	}
	return false
}

// waitFor waits until the consumer got at least n messages.
func (c *logConsumer) waitFor(t *testing.T, n int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return len(c.delivered()) >= n }, within, 5*time.Millisecond,
		"the log reader delivered %d of %d messages", len(c.delivered()), n)
}

// readLog runs ReadLog in the background; the returned function stops it and returns its
// error. The test's end stops it too.
func readLog(t *testing.T, st store.Engine, c *logConsumer) (stop func() error) {
	t.Helper()
	return startLog(t, st, c).stop
}

// logRun is a ReadLog call running in the background.
type logRun struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startLog runs ReadLog in the background, until stopped or the test ends.
func startLog(t *testing.T, st store.Engine, c *logConsumer) *logRun {
	t.Helper()
	r, ok := st.(store.LogReader)
	require.True(t, ok, "%T reads no change log", st)
	ctx, cancel := context.WithCancel(context.Background())
	run := &logRun{cancel: cancel, done: make(chan error, 1)}
	go func() { run.done <- ReadLog(ctx, r, c.consumer()) }()
	t.Cleanup(func() { run.stop() })
	return run
}

// stop ends the reading and returns what ReadLog returned.
func (r *logRun) stop() error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(30 * time.Second):
			r.err = fmt.Errorf("ReadLog did not return within 30s of its context ending")
		}
	})
	return r.err
}

// ended reports whether ReadLog returned by itself within d, and what it returned.
func (r *logRun) ended(d time.Duration) (ended bool, err error) {
	select {
	case err := <-r.done:
		r.once.Do(func() { r.err = err })
		return true, err
	case <-time.After(d):
		return false, nil
	}
}

// writeInTurn writes n messages over 5 keys, a few to a transaction, one transaction after
// another with pause between them, in the background; the returned function waits for the
// writer and returns the ids in write order, which is commit order.
func writeInTurn(t *testing.T, h Harness, prefix string, n int, pause time.Duration) (written func() []string) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		ids  []string
		werr error
	)
	wg.Go(func() {
		for len(ids) < n {
			msgs := make([]store.Message, min(1+len(ids)%4, n-len(ids)))
			for i := range msgs {
				msgs[i] = store.Message{ID: store.NewID(), Topic: "log", Key: fmt.Sprintf("k%d", len(ids)%5), Payload: []byte(fmt.Sprintf("%s-%d", prefix, len(ids)+i))}
			}
			if werr = writeTx(context.Background(), h, msgs); werr != nil {
				return
			}
			for _, m := range msgs {
				ids = append(ids, m.ID)
			}
			time.Sleep(pause)
		}
	})
	return func() []string {
		wg.Wait()
		require.NoError(t, werr)
		return ids
	}
}

// requireOnceInOrder checks that got is want: each message once, in commit order.
func requireOnceInOrder(t *testing.T, want, got []string) {
	t.Helper()
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for _, id := range want {
		require.Equal(t, 1, seen[id], "message %s delivered %d times", id, seen[id])
	}
	require.Equal(t, want, got, "commit order")
}

// testLogDelivers: the reader hands over what is committed, in commit order, once; it marks
// it delivered, and says that it reads.
func testLogDelivers(t *testing.T, h LogHarness) {
	c := &logConsumer{}
	stop := readLog(t, h.Store, c)
	var want []string
	for i := range 5 {
		want = append(want, write(t, h.Harness, msg("log", "a", fmt.Sprint(i)), msg("log", "b", fmt.Sprint(i)), msg("log", "", fmt.Sprint(i)))...)
	}
	c.waitFor(t, len(want), 30*time.Second)
	time.Sleep(200 * time.Millisecond) // a duplicate, if any, would show by now
	requireOnceInOrder(t, want, c.delivered())
	requireAllMarked(t, h.Harness)
	require.Eventually(t, func() bool { s, _ := c.status(); return s.Reading && !s.CaughtUp.IsZero() }, 10*time.Second, 10*time.Millisecond,
		"the reader says that it reads and caught up")
	require.ErrorIs(t, stop(), context.Canceled)
}

// testLogResumes: a reader stopped and started again while messages are written resumes
// where it stopped: nothing lost, nothing recorded as delivered handed over again.
func testLogResumes(t *testing.T, h LogHarness) {
	const n = 600
	written := writeInTurn(t, h.Harness, "r", n, 2*time.Millisecond)
	c := &logConsumer{}
	var positions []string
	for i := range 3 {
		stop := readLog(t, h.Store, c)
		c.waitFor(t, (i+1)*n/6, 60*time.Second)
		require.ErrorIs(t, stop(), context.Canceled)
		positions = append(positions, h.Position(t))
	}
	require.NotEqual(t, positions[0], positions[2], "the position moves with the recorded batches")
	want := written()
	stop := readLog(t, h.Store, c)
	c.waitFor(t, n, 60*time.Second)
	time.Sleep(300 * time.Millisecond)
	require.ErrorIs(t, stop(), context.Canceled)
	requireOnceInOrder(t, want, c.delivered())
}

// testLogStandby: a second instance waits while the first reads, says so, reads nothing,
// and takes over when the first stops: every message once, in commit order.
func testLogStandby(t *testing.T, h LogHarness) {
	leader, standby := &logConsumer{}, &logConsumer{}
	stopLeader := readLog(t, h.Store, leader)
	require.Eventually(t, leader.reading, 20*time.Second, 10*time.Millisecond)
	stopStandby := readLog(t, h.Another(t), standby)
	require.Eventually(t, func() bool { s, ok := standby.status(); return ok && !s.Reading }, 20*time.Second, 10*time.Millisecond,
		"the second instance says that it waits")

	const n = 300
	written := writeInTurn(t, h.Harness, "s", n, 3*time.Millisecond)
	leader.waitFor(t, n/4, 60*time.Second)
	require.False(t, standby.reading(), "one reader at a time")
	require.Empty(t, standby.delivered())
	require.ErrorIs(t, stopLeader(), context.Canceled)
	require.Eventually(t, standby.reading, 20*time.Second, 10*time.Millisecond, "the standby takes over")

	want := written()
	require.Eventually(t, func() bool { return len(leader.delivered())+len(standby.delivered()) >= n }, 60*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	requireOnceInOrder(t, want, append(leader.delivered(), standby.delivered()...))
	require.ErrorIs(t, stopStandby(), context.Canceled, "the standby read on from the moment it took over, with no error")
}

// testLogLargeTransaction: a transaction larger than the consumer's batch comes in batches of
// that size; the position stays before it until it is recorded whole, so a reader stopped
// halfway reads it again and skips what was recorded as delivered.
func testLogLargeTransaction(t *testing.T, h LogHarness) {
	const n, batch = 1050, 100
	msgs := make([]store.Message, n)
	for i := range msgs {
		msgs[i] = msg("big", fmt.Sprintf("k%d", i%7), fmt.Sprint(i))
	}
	// Written while no reader reads: the position cannot move past other transactions
	// meanwhile (other databases' writes on a shared server), only past this one.
	want := write(t, h.Harness, msgs...)
	before := h.Position(t)
	c := &logConsumer{batch: batch, pause: 50 * time.Millisecond}
	stop := readLog(t, h.Store, c)
	c.waitFor(t, 3*batch, 30*time.Second)
	require.ErrorIs(t, stop(), context.Canceled)
	first := len(c.delivered())
	require.Less(t, first, n, "stopped halfway through the transaction")
	require.Equal(t, before, h.Position(t), "the position stays before the transaction until it is recorded whole")

	c.mu.Lock()
	c.pause = 0
	c.mu.Unlock()
	stop = readLog(t, h.Store, c)
	c.waitFor(t, n, 30*time.Second)
	require.Eventually(t, func() bool { return h.Position(t) != before }, 10*time.Second, 10*time.Millisecond,
		"the position moves past the transaction once it is recorded")
	time.Sleep(300 * time.Millisecond)
	require.ErrorIs(t, stop(), context.Canceled)
	requireOnceInOrder(t, want, c.delivered())
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, size := range c.sizes {
		require.LessOrEqual(t, size, batch)
	}
}

// requireAllMarked waits until no message of h is pending: every delivered one is marked.
func requireAllMarked(t *testing.T, h Harness) {
	t.Helper()
	require.Eventually(t, func() bool {
		list, err := h.Store.List(context.Background(), &store.ListParams{State: store.Pending, Limit: 10000})
		require.NoError(t, err)
		return len(list.Messages) == 0
	}, 10*time.Second, 10*time.Millisecond, "delivered messages are marked")
}
