// Package kafkatest runs an in-process Kafka broker (franz-go's kfake) on loopback and reads
// topics back with franz-go's client, independent of the watermill/sarama producer under test.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Partitions is the number of partitions of auto-created topics.
const Partitions = 8

// NewCluster starts a one-broker cluster on 127.0.0.1 at a free port; topics are created on
// first use with [Partitions] partitions. Close it when done.
func NewCluster() (*kfake.Cluster, error) {
	return kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(Partitions),
	)
}

// Record is a record read back from a topic.
type Record struct {
	Key       string
	Value     []byte
	Headers   map[string]string
	Partition int32
	Offset    int64
	// Received is when the consumer got it.
	Received time.Time
}

// Consumer reads topics from the beginning with franz-go.
type Consumer struct{ cl *kgo.Client }

// NewConsumer starts consuming topics from their first offsets.
func NewConsumer(brokers []string, topics ...string) (*Consumer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.AllowAutoTopicCreation(),
		kgo.FetchMaxWait(50*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	return &Consumer{cl: cl}, nil
}

// Poll returns the records fetched in one round, waiting at most until ctx ends. Records that
// arrive as ctx ends are returned too: the client counts them as consumed.
func (c *Consumer) Poll(ctx context.Context) ([]Record, error) {
	fetches := c.cl.PollFetches(ctx)
	var firstErr error
	fetches.EachError(func(topic string, p int32, err error) {
		if firstErr == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			firstErr = fmt.Errorf("fetch %s[%d]: %w", topic, p, err)
		}
	})
	var out []Record
	now := time.Now()
	fetches.EachRecord(func(r *kgo.Record) {
		h := make(map[string]string, len(r.Headers))
		for _, kv := range r.Headers {
			h[kv.Key] = string(kv.Value)
		}
		out = append(out, Record{Key: string(r.Key), Value: r.Value, Headers: h, Partition: r.Partition, Offset: r.Offset, Received: now})
	})
	return out, firstErr
}

// ReadN reads until it has n records or ctx ends; it returns what it read.
func (c *Consumer) ReadN(ctx context.Context, n int) ([]Record, error) {
	var out []Record
	for len(out) < n && ctx.Err() == nil {
		recs, err := c.Poll(ctx)
		if err != nil {
			return out, err
		}
		out = append(out, recs...)
	}
	return out, ctx.Err()
}

// Close stops the consumer.
func (c *Consumer) Close() { c.cl.Close() }
