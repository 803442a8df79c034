package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
)

// brokerCase measures the ceiling the drain cases run under: n messages published from
// memory, batch by batch as the dispatcher publishes them, through the same publisher into
// the same in-process broker, and read back by the same consumer. No database takes part.
func brokerCase(n, batch int) error {
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	published := publishFromMemory(pub, topic, n, batch)
	dups, err := readAll(ctx, consumer, n, publisher.MetadataID)
	if err != nil {
		return err
	}
	if err := <-published; err != nil {
		return err
	}
	elapsed := time.Since(start)
	fmt.Printf("case=broker n=%d batch=%d rate=%.0f duplicates=%d elapsed=%v\n", n, batch, float64(n)/elapsed.Seconds(), dups, elapsed.Round(time.Millisecond))
	return nil
}

// publishFromMemory publishes n messages of the drain cases' shape (256-byte payloads over
// keys, with the metadata the dispatcher sets) batch by batch through pub, in the background,
// and reports on the channel when it is done.
func publishFromMemory(pub publisher.BatchPublisher, topic string, n, batch int) <-chan error {
	published := make(chan error, 1)
	go func() {
		for i := 0; i < n; i += batch {
			msgs := make([]*message.Message, 0, batch)
			for j := i; j < min(i+batch, n); j++ {
				id := store.NewID()
				m := message.NewMessage(id, payload256)
				m.Metadata.Set(publisher.MetadataID, id)
				m.Metadata.Set(publisher.MetadataKey, fmt.Sprintf("key-%d", j%keys))
				m.Metadata.Set(publisher.MetadataCreatedAt, time.Now().Format(time.RFC3339Nano))
				msgs = append(msgs, m)
			}
			if err := pub.PublishBatch(topic, msgs); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	return published
}
