package dispatcher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// scriptedLog is a store whose change log carries given batches, at once, and whose filter
// holds back the keys that recorded failures hold, as a store's filter does: what a
// recorded batch holds, the next filter sees.
type scriptedLog struct {
	dbtest.Store
	batches [][]store.ClaimedMessage
	mu      sync.Mutex
	held    map[string]bool
	keyOf   map[string]string
	// filtered and recorded count the batches filtered and recorded.
	filtered, recorded int
}

func (l *scriptedLog) counts() (filtered, recorded int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.filtered, l.recorded
}

func (l *scriptedLog) Capabilities() store.Capabilities {
	c := l.Store.Capabilities()
	c.ChangeLog = true
	return c
}

func (l *scriptedLog) OpenLog(ctx context.Context, o store.LogOptions) (store.LogStream, error) {
	o.Status(store.LogStatus{Reading: true, CaughtUp: time.Now()})
	return &scriptedStream{l: l}, nil
}

type scriptedStream struct {
	l    *scriptedLog
	next int
}

func (s *scriptedStream) Next(ctx context.Context) (*store.LogBatch, error) {
	if s.next == len(s.l.batches) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	msgs := s.l.batches[s.next]
	s.next++
	return &store.LogBatch{Read: msgs}, nil
}

func (s *scriptedStream) Filter(_ context.Context, b *store.LogBatch) error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.filtered++
	b.Publish, b.HeldBack = nil, false
	for _, m := range b.Read.([]store.ClaimedMessage) {
		s.l.keyOf[m.ID] = m.Key
		if s.l.held[m.Key] {
			b.HeldBack = true // handed over to polling
			continue
		}
		b.Publish = append(b.Publish, m)
	}
	return nil
}

func (s *scriptedStream) Record(_ context.Context, bs []*store.LogBatch) error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.recorded += len(bs)
	for _, b := range bs {
		for _, f := range b.Outcome.Failures {
			s.l.held[s.l.keyOf[f.ID]] = true
		}
	}
	return nil
}

func (s *scriptedStream) Close() error { return nil }

// While a batch from the change log is published, the next one is read and filtered ahead;
// when a message of the first batch fails, the next batch is filtered again once the failure
// is recorded, so that a later message of the failed key is not published before it.
func TestLogBatchReadAheadIsFilteredAgainAfterAFailure(t *testing.T) {
	_, _, st := sharedSQLite(t).prepare(t)
	msg := func(id, key string) store.ClaimedMessage {
		return store.ClaimedMessage{Message: store.Message{ID: id, Topic: "log", Key: key, Payload: []byte(id)}}
	}
	log := &scriptedLog{Store: st, held: map[string]bool{}, keyOf: map[string]string{},
		batches: [][]store.ClaimedMessage{
			{msg("k-1", "k"), msg("x-1", "x")},
			{msg("k-2", "k"), msg("x-2", "x")},
		}}
	pub := outboxtest.NewPublisher()
	release := make(chan struct{})
	pub.Fail = func(_ string, m *message.Message) error {
		if m.UUID == "k-1" {
			<-release // the next batch is read and filtered meanwhile
			return errors.New("broker hiccup")
		}
		return nil
	}
	d, err := dispatcher.New(log, pub, fast(dispatcher.Config{}))
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	t.Cleanup(func() { d.Stop(context.Background()) })
	require.Eventually(t, func() bool { filtered, _ := log.counts(); return filtered == 2 }, 10*time.Second, time.Millisecond,
		"the second batch is filtered while k-1 is being published")
	close(release)
	require.Eventually(t, func() bool { _, recorded := log.counts(); return recorded == 2 }, 10*time.Second, time.Millisecond,
		"both batches are recorded")
	var got []string
	for _, m := range pub.Messages("log") {
		got = append(got, m.Metadata.Get(publisher.MetadataID))
	}
	require.NotContains(t, got, "k-2", "a later message of a key whose earlier message failed is not published by the log reader")
	require.Contains(t, got, "x-2")
}
