package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
)

// liveWriters share the pacing ticker: one message per transaction costs a commit (an fsync
// on Postgres), so one writer alone falls short of 1000/s on this machine.
const liveWriters = 4

// liveCase writes one message per transaction at rate while the dispatcher runs, and prints
// the commit-to-consume latency.
func liveCase(name, label string, rate int, window time.Duration, cfg dispatcher.Config) error {
	db, err := newDatabase(name)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return err
	}
	// database/sql keeps 2 idle connections by default: the writers would open and close
	// connections all the time, as no application under load would.
	db.st.DB().SetMaxIdleConns(liveWriters + 4)
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return err
	}
	defer consumer.Close()
	d, err := dispatcher.New(db.st, pub, cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop(ctx)
	if err := awaitLogMode(d, db.st, cfg); err != nil {
		return err
	}
	write := func(ctx context.Context, id string, i int) error {
		tx, err := db.st.DB().BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		msg := store.Message{ID: id, Topic: topic, Key: fmt.Sprintf("key-%d", i%keys), Payload: payload256}
		if err := db.st.Write(ctx, tx, msg); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	if err := warmUp(consumer, publisher.MetadataID, write); err != nil {
		return err
	}
	return live(label, rate, window, consumer, publisher.MetadataID, write)
}

// forwarderLiveCase is liveCase for watermill's forwarder on Postgres.
func forwarderLiveCase(rate int, window time.Duration) error {
	s, err := newForwarderSetup()
	if err != nil {
		return err
	}
	defer s.close()
	s.db.SetMaxIdleConns(liveWriters + 4)
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	consumer, err := kafkatest.NewConsumer(brokers, topic)
	if err != nil {
		return err
	}
	defer consumer.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run, stop, err := s.newForwarder(brokers)
	if err != nil {
		return err
	}
	defer stop()
	run(ctx)
	write := func(ctx context.Context, id string, i int) error {
		return s.write(ctx, forwarderMessage(id, i))
	}
	if err := warmUp(consumer, wmkafka.UUIDHeaderKey, write); err != nil {
		return err
	}
	return live("forwarder", rate, window, consumer, wmkafka.UUIDHeaderKey, write)
}

// live runs write at rate for window from liveWriters goroutines, each message in its own
// transaction, and matches commit times with the consumer's receive times by message id.
func live(name string, rate int, window time.Duration, consumer *kafkatest.Consumer, idHeader string,
	write func(ctx context.Context, id string, i int) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := &liveTimes{received: map[string]time.Time{}, committed: map[string]time.Time{}}
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		t.consume(ctx, consumer, idHeader)
	}()

	began := time.Now()
	due := pace(rate, window, began)
	if err := t.writeAll(ctx, due, write); err != nil {
		return err
	}
	elapsed := time.Since(began)
	if err := t.awaitReceived(2 * time.Minute); err != nil {
		return err
	}
	cancel()
	<-consumed

	lat := t.latencies()
	fmt.Printf("case=%s-live rate=%.0f n=%d p50=%.1fms p99=%.1fms\n",
		name, float64(len(lat))/elapsed.Seconds(), len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 99)))
	return nil
}

// liveTimes holds, by message id, when the live case's writers committed each message and
// when the consumer received it.
type liveTimes struct {
	mu        sync.Mutex
	received  map[string]time.Time
	committed map[string]time.Time
	lastErr   error // a fetch error is retried: a lost message shows as missing
}

// consume records the first receive time of each message until ctx ends.
func (t *liveTimes) consume(ctx context.Context, consumer *kafkatest.Consumer, idHeader string) {
	for ctx.Err() == nil {
		recs, err := consumer.Poll(ctx)
		t.mu.Lock()
		if err != nil {
			t.lastErr = err
		}
		for _, r := range recs {
			id := r.Headers[idHeader]
			if _, dup := t.received[id]; !dup {
				t.received[id] = r.Received
			}
		}
		t.mu.Unlock()
	}
}

// pace hands out on the returned channel the indices of the messages due by now, from
// began until window has passed.
//
// A late tick does not lower the rate; writers that fall behind catch up from a second's
// worth of backlog, and what they cannot write by the end of the window is not written: the
// rate printed is the rate achieved.
func pace(rate int, window time.Duration, began time.Time) <-chan int {
	total := int(window.Seconds() * float64(rate))
	due := make(chan int, rate)
	go func() {
		defer close(due)
		ticker := time.NewTicker(time.Millisecond)
		defer ticker.Stop()
		sent := 0
		for now := range ticker.C {
			if now.Sub(began) >= window {
				return
			}
			for upTo := min(int(now.Sub(began).Seconds()*float64(rate)), total); sent < upTo; {
				select {
				case due <- sent:
					sent++
				default:
					upTo = sent // full: the writers are a second behind
				}
			}
		}
	}()
	return due
}

// writeAll writes the messages due from liveWriters goroutines and records their commit
// times; it returns once due is closed and every writer has stopped.
func (t *liveTimes) writeAll(ctx context.Context, due <-chan int, write func(ctx context.Context, id string, i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, liveWriters)
	for range liveWriters {
		wg.Go(func() {
			for i := range due {
				id := store.NewID()
				if err := write(ctx, id, i); err != nil {
					errs <- err
					return
				}
				at := time.Now()
				t.mu.Lock()
				t.committed[id] = at
				t.mu.Unlock()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("write: %w", err)
	default:
		return nil
	}
}

// awaitReceived waits until every committed message has been received, for at most timeout.
func (t *liveTimes) awaitReceived(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		t.mu.Lock()
		missing := 0
		for id := range t.committed {
			if _, ok := t.received[id]; !ok {
				missing++
			}
		}
		n, err := len(t.committed), t.lastErr
		t.mu.Unlock()
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d messages not received (last fetch error: %v)", missing, n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// latencies returns the sorted commit-to-receive latencies.
func (t *liveTimes) latencies() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	lat := make([]time.Duration, 0, len(t.committed))
	for id, at := range t.committed {
		lat = append(lat, t.received[id].Sub(at))
	}
	slices.Sort(lat)
	return lat
}

// warmUp writes one message and waits until it is consumed: the live case measures the
// steady state, not the start of the dispatcher, its log reader, or the broker's topic.
func warmUp(consumer *kafkatest.Consumer, idHeader string, write func(ctx context.Context, id string, i int) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := store.NewID()
	if err := write(ctx, id, 0); err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	for {
		recs, err := consumer.Poll(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("warm up: the first message did not arrive within a minute (%v)", err)
		}
		for _, r := range recs {
			if r.Headers[idHeader] == id {
				return nil
			}
		}
	}
}

// awaitLogMode waits, for a dispatcher that will read the change log, until its reader runs:
// the live case measures the steady state, not the reader's start.
func awaitLogMode(d *dispatcher.Dispatcher, st store.Engine, cfg dispatcher.Config) error {
	if cfg.PollOnly || !st.Capabilities().ChangeLog {
		return nil
	}
	for deadline := time.Now().Add(30 * time.Second); d.Mode() != dispatcher.ModeLog; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the dispatcher is still in %s mode after 30s", d.Mode())
		}
	}
	return nil
}
