package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher/kafkapub"
)

// copyHeader marks the copies chaos publishes, so that they are not copied again.
const copyHeader = "saga_chaos_copy"

// Chaos settings: how many times each dispatcher crashes, how long a crashed service stays
// down, and which share of the publish calls and handler runs fail.
const (
	crashesPerService = 3
	downtime          = 200 * time.Millisecond
	loseAckEvery      = 5 // publish calls
	failHandlerEvery  = 6 // handler runs, by message id
)

// chaos injects the faults of -chaos. Each one produces what a service must survive in
// production: a redelivery, a repeated publish, or a transaction that does not commit.
type chaos struct {
	copier *kafkapub.Publisher // a second publisher, for the copies
	track  *tracker
	log    *slog.Logger

	mu     sync.Mutex
	failed map[string]bool // handler/id pairs failed once already

	publishCalls                           atomic.Int64 // over all dispatchers, restarts included
	restarts, lostAcks, copies, rolledBack atomic.Int64
}

func newChaos(copier *kafkapub.Publisher, track *tracker, log *slog.Logger) *chaos {
	return &chaos{copier: copier, track: track, log: log, failed: map[string]bool{}}
}

type crashTarget struct {
	s        *service
	progress func() int64 // how far the service got, out of the number of orders
}

// crashDispatchers crashes each service's dispatcher when its progress passes a quarter, a
// half and three quarters of the orders, and restarts it after a short downtime. It
// alternates the two ways a dispatcher ends abruptly: its Start context cancelled, or a Stop
// that gives up at once.
func (c *chaos) crashDispatchers(ctx context.Context, orders int, targets ...crashTarget) error {
	crashes := make([]int, len(targets))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done := true
		for i, t := range targets {
			if crashes[i] == crashesPerService {
				continue
			}
			done = false
			if t.progress() < int64((crashes[i]+1)*orders/(crashesPerService+1)) {
				continue
			}
			t.s.crashDispatcher(crashes[i]%2 == 0)
			crashes[i]++
			select {
			case <-time.After(downtime): // messages pile up in the outbox meanwhile
			case <-ctx.Done():
				return nil
			}
			if err := t.s.startDispatcher(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("restart %s dispatcher: %w", t.s.name, err)
			}
			c.restarts.Add(1)
		}
		if done {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

var errLostAck = errors.New("chaos: the broker stored the batch, but its ack was lost")

// lossyPublisher publishes, then reports some batches as failed although Kafka stored them,
// as when an ack is lost on the network: the dispatcher publishes them again.
type lossyPublisher struct {
	*kafkapub.Publisher
	c *chaos
}

func (c *chaos) loseAcks(pub *kafkapub.Publisher) message.Publisher {
	return &lossyPublisher{Publisher: pub, c: c}
}

func (p *lossyPublisher) PublishBatch(topic string, msgs []*message.Message) error {
	if err := p.Publisher.PublishBatch(topic, msgs); err != nil {
		return err
	}
	if p.c.publishCalls.Add(1)%loseAckEvery == 0 {
		p.c.lostAcks.Add(int64(len(msgs)))
		return errLostAck
	}
	return nil
}

func (p *lossyPublisher) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

// republish publishes a copy of every message of a topic once it was handled: each consumer
// of the topic gets it a second time, later, as after a redelivery.
func (c *chaos) republish(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil || msg.Metadata.Get(copyHeader) != "" {
			return out, err
		}
		topic := message.SubscribeTopicFromCtx(msg.Context())
		if !c.track.claimCopy(topic, msg.UUID) {
			return out, nil // another consumer of the topic sent it
		}
		cp := message.NewMessage(msg.UUID, msg.Payload) // the same id: a duplicate, not a new event
		cp.Metadata = maps.Clone(msg.Metadata)
		cp.Metadata.Set(copyHeader, "1")
		if err := c.copier.Publish(topic, cp); err != nil {
			c.track.unclaimCopy(topic, msg.UUID)
			c.log.Error("chaos: publish copy", slog.String("id", msg.UUID), slog.Any("error", err))
			return out, nil
		}
		c.copies.Add(1)
		return out, nil
	}
}

// failAfterWrite fails some handler runs after the handler wrote its effects, the first time
// only. Inside the inbox, the transaction rolls back, message id included, and Kafka
// redelivers the message.
func (c *chaos) failAfterWrite(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil {
			return out, err
		}
		key := message.HandlerNameFromCtx(msg.Context()) + "/" + msg.UUID
		f := fnv.New32a()
		f.Write([]byte(key))
		if f.Sum32()%failHandlerEvery != 0 {
			return out, nil
		}
		c.mu.Lock()
		first := !c.failed[key]
		c.failed[key] = true
		c.mu.Unlock()
		if !first {
			return out, nil
		}
		c.rolledBack.Add(1)
		return nil, fmt.Errorf("chaos: handler failed after writing (message %s)", msg.UUID)
	}
}
