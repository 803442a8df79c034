package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v4"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// failureOf is the error of message id in a publish call's error.
func failureOf(err error, id string) error {
	var be *publisher.BatchError
	if errors.As(err, &be) {
		return be.Failed[id]
	}
	return err
}

// outcome is what became of a claimed batch.
type outcome struct {
	delivered   []string
	failures    []store.Failure
	unattempted []string
	parked      []parkedMessage
}

type parkedMessage struct {
	m   store.ClaimedMessage
	err error
}

// attempt is what happened to one claimed message.
type attempt struct {
	tried bool
	err   error
}

// deliver publishes a batch, in write order, and settles what became of each message. It
// publishes the dead letters of the messages it parks and counts the published ones.
func (d *Dispatcher) deliver(ctx context.Context, msgs []store.ClaimedMessage) *outcome {
	d.metrics.batchSize.Record(ctx, int64(len(msgs)))
	chains := chainsByKey(msgs)
	attempts := make([]attempt, len(msgs))
	if bp, ok := d.pub.(publisher.BatchPublisher); ok {
		d.publishBatches(ctx, bp, msgs, attempts)
	} else {
		d.publishChains(ctx, msgs, chains, attempts)
	}
	out := d.settle(ctx, msgs, chains, attempts)
	d.deadLetter(out.parked)
	d.published.Add(int64(len(out.delivered)))
	return out
}

// chainsByKey splits a batch, in write order, into chains of message indexes that must be
// published one after another: one per topic and non-empty key (the order a consumer of the
// topic sees), and one per message without a key.
func chainsByKey(msgs []store.ClaimedMessage) [][]int {
	type topicKey struct{ topic, key string }
	var chains [][]int
	byKey := map[topicKey]int{}
	for i, m := range msgs {
		if m.Key == "" {
			chains = append(chains, []int{i})
			continue
		}
		k := topicKey{m.Topic, m.Key}
		c, ok := byKey[k]
		if !ok {
			c = len(chains)
			byKey[k] = c
			chains = append(chains, nil)
		}
		chains[c] = append(chains[c], i)
	}
	return chains
}

// publishChains publishes message by message, Concurrency keys at a time, each key's messages
// in order and stopping at its first failure. Any watermill publisher can do this.
func (d *Dispatcher) publishChains(ctx context.Context, msgs []store.ClaimedMessage, chains [][]int, attempts []attempt) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(d.cfg.Concurrency, len(chains)) {
		wg.Go(func() {
			for c := int(next.Add(1)) - 1; c < len(chains); c = int(next.Add(1)) - 1 {
				for _, i := range chains[c] {
					if ctx.Err() != nil {
						break
					}
					attempts[i] = attempt{tried: true, err: d.publish(ctx, msgs[i])}
					if attempts[i].err != nil {
						break
					}
				}
			}
		})
	}
	wg.Wait()
}

// publishBatches publishes with one call per topic, the topics in parallel.
func (d *Dispatcher) publishBatches(ctx context.Context, bp publisher.BatchPublisher, msgs []store.ClaimedMessage, attempts []attempt) {
	byTopic := map[string][]int{}
	var topics []string
	for i, m := range msgs {
		if _, ok := byTopic[m.Topic]; !ok {
			topics = append(topics, m.Topic)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], i)
	}
	var wg sync.WaitGroup
	for _, topic := range topics {
		wg.Go(func() {
			idx := byTopic[topic]
			batch := make([]*message.Message, len(idx))
			ends := make([]func(error), len(idx))
			for j, i := range idx {
				mctx, end := d.publishSpan(ctx, msgs[i])
				batch[j], ends[j] = d.toWatermill(mctx, msgs[i]), end
			}
			start := time.Now()
			err := d.safely(func() error { return bp.PublishBatch(topic, batch) })
			d.metrics.publishDuration.Record(ctx, time.Since(start).Seconds())
			for j, i := range idx {
				attempts[i] = attempt{tried: true}
				if err != nil {
					attempts[i].err = failureOf(err, msgs[i].ID)
				}
				ends[j](attempts[i].err)
			}
		})
	}
	wg.Wait()
}

// settle turns attempts into an outcome, key by key in write order: messages before a key's
// first failure are delivered; the first failure is a failed attempt (or parks the message);
// the later messages of the key are given back, to wait behind it. A later message that the
// publisher acknowledged anyway is delivered, out of order, and logged.
func (d *Dispatcher) settle(ctx context.Context, msgs []store.ClaimedMessage, chains [][]int, attempts []attempt) *outcome {
	out := &outcome{}
	now := time.Now()
	publishedByTopic := map[string]int64{}
	for _, chain := range chains {
		failed := false
		for _, i := range chain {
			a, m := attempts[i], msgs[i]
			switch {
			case a.tried && a.err == nil:
				out.delivered = append(out.delivered, m.ID)
				publishedByTopic[m.Topic]++
				d.metrics.latency.Record(ctx, now.Sub(m.CreatedAt).Seconds())
				if failed {
					d.log.Warn("message acknowledged after an earlier message of its key failed: its key is out of order",
						slog.String("id", m.ID), slog.String("key", m.Key))
				}
			case a.tried && !failed:
				failed = true
				f := d.failure(m, a.err)
				out.failures = append(out.failures, *f)
				if f.Park {
					out.parked = append(out.parked, parkedMessage{m: m, err: a.err})
				}
			default:
				out.unattempted = append(out.unattempted, m.ID)
			}
		}
	}
	for topic, n := range publishedByTopic { // one measurement per topic, not per message
		d.metrics.published.Add(ctx, n, topicAttr(topic))
		d.topic(topic).Published.Add(n)
	}
	return out
}

func (d *Dispatcher) publish(ctx context.Context, m store.ClaimedMessage) error {
	ctx, end := d.publishSpan(ctx, m)
	msg := d.toWatermill(ctx, m)
	start := time.Now()
	err := d.safely(func() error { return d.pub.Publish(m.Topic, msg) })
	d.metrics.publishDuration.Record(ctx, time.Since(start).Seconds())
	end(err)
	return err
}

// safely runs a publisher call, turning a panic into an error.
func (d *Dispatcher) safely(call func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("outbox: publisher panicked: %v", p)
		}
	}()
	return call()
}

// toWatermill is the published form of m: its id as UUID and header, its key and creation
// time as headers, and ctx for cancellation and tracing.
func (d *Dispatcher) toWatermill(ctx context.Context, m store.ClaimedMessage) *message.Message {
	msg := message.NewMessage(m.ID, m.Payload)
	for k, v := range m.Headers {
		msg.Metadata.Set(k, v)
	}
	msg.Metadata.Set(publisher.MetadataID, m.ID)
	if m.Key != "" {
		msg.Metadata.Set(publisher.MetadataKey, m.Key)
	}
	msg.Metadata.Set(publisher.MetadataCreatedAt, m.CreatedAt.Format(time.RFC3339Nano))
	setTraceContext(ctx, msg.Metadata)
	msg.SetContext(ctx)
	return msg
}

// failure records a failed attempt: retry after the backoff for this attempt, or park after
// the last attempt or a permanent error.
func (d *Dispatcher) failure(m store.ClaimedMessage, err error) *store.Failure {
	attempt := m.Attempts + 1
	d.failed.Add(1)
	d.topic(m.Topic).Failed.Add(1)
	d.metrics.failures.Add(context.Background(), 1, topicAttr(m.Topic))
	f := &store.Failure{ID: m.ID, Error: err.Error()}
	attrs := []any{slog.String("id", m.ID), slog.String("topic", m.Topic), slog.String("key", m.Key),
		slog.Int("attempt", attempt), slog.Any("error", err)}
	if publisher.IsPermanent(err) {
		f.Park = true
		d.countParked(m.Topic)
		d.log.Error("message parked: the publisher says retrying cannot help", attrs...)
		return f
	}
	if attempt >= d.cfg.MaxAttempts {
		f.Park = true
		d.countParked(m.Topic)
		d.log.Error("message parked after its last attempt", attrs...)
		return f
	}
	f.RetryAfter = d.retryAfter(attempt)
	d.log.Warn("publish failed; will retry", append(attrs, slog.Duration("retry_in", f.RetryAfter))...)
	return f
}

func (d *Dispatcher) countParked(topic string) {
	d.parked.Add(1)
	d.topic(topic).Parked.Add(1)
	d.metrics.parkedN.Add(context.Background(), 1, topicAttr(topic))
}

// deadLetter publishes a copy of each parked message to Config.DeadLetterTopic with the
// reason, for consumers that watch what was given up on. The message stays parked in the
// outbox either way, to be requeued by an operator.
func (d *Dispatcher) deadLetter(parked []parkedMessage) {
	if d.cfg.DeadLetterTopic == "" {
		return
	}
	for _, p := range parked {
		msg := d.toWatermill(context.Background(), p.m)
		msg.Metadata.Set(publisher.MetadataError, p.err.Error())
		msg.Metadata.Set(publisher.MetadataTopic, p.m.Topic)
		if err := d.safely(func() error { return d.pub.Publish(d.cfg.DeadLetterTopic, msg) }); err != nil {
			d.log.Error("cannot publish dead letter", slog.String("id", p.m.ID), slog.String("topic", d.cfg.DeadLetterTopic), slog.Any("error", err))
		}
	}
}

// retryAfter is the randomised exponential backoff before attempt+1.
func (d *Dispatcher) retryAfter(attempt int) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(d.cfg.RetryInitial),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxInterval(d.cfg.RetryMax),
		backoff.WithMaxElapsedTime(0),
	)
	wait := b.NextBackOff()
	for i := 1; i < attempt && i < 64; i++ {
		wait = b.NextBackOff()
	}
	return wait
}
