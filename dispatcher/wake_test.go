package dispatcher_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
)

// On Postgres, a commit made by another application instance (another connection pool and
// store) wakes an idle polling dispatcher at once (pg_notify, heard through LISTEN), rather
// than at its next poll, which is seconds away.
func TestAnotherInstancesCommitWakesAnIdleDispatcher(t *testing.T) {
	shared := sharedPostgres(t)
	_, _, st := shared.prepare(t)
	require.True(t, st.Capabilities().CrossProcessNotify)
	claims := &timedStore{Store: st}
	pub := outboxtest.NewPublisher()
	d, err := dispatcher.New(claims, pub, dispatcher.Config{PollOnly: true, PollInterval: time.Hour, Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	defer d.Stop(context.Background())

	// Idle waits double after each empty claim: once two claims are a second apart, the next
	// is at least two seconds after the last. Write right after a claim, then.
	require.Eventually(t, func() bool { return claims.lastGap() >= time.Second }, time.Minute, time.Millisecond)
	otherDB, other := shared.open(t, shared.dsn, shared.table)
	defer otherDB.Close()
	tx, err := otherDB.Begin()
	require.NoError(t, err)
	require.NoError(t, other.Write(context.Background(), tx, store.Message{Topic: "t", Payload: []byte("from another instance")}))
	start := time.Now()
	require.NoError(t, tx.Commit())
	require.Less(t, time.Since(claims.last()), time.Second, "the write follows a claim")
	require.Eventually(t, func() bool { return len(pub.Messages("t")) == 1 }, time.Second, time.Millisecond,
		"another instance's commit must wake the idle dispatcher before its next poll")
	t.Logf("commit in another instance to publish while idle: %v", time.Since(start))
}

// timedStore records when each claim was made.
type timedStore struct {
	dbtest.Store
	mu    sync.Mutex
	times []time.Time
}

func (s *timedStore) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	s.mu.Lock()
	s.times = append(s.times, time.Now())
	s.mu.Unlock()
	return s.Store.Claim(ctx, p)
}

// lastGap is the time between the last two claims.
func (s *timedStore) lastGap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.times); n >= 2 {
		return s.times[n-1].Sub(s.times[n-2])
	}
	return 0
}

func (s *timedStore) last() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.times[len(s.times)-1]
}
