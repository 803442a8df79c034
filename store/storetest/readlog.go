package storetest

import (
	"context"

	"github.com/outboxgo/outbox/store"
)

// LogConsumer is what [ReadLog] hands the messages of a change log to, as a dispatcher
// publishes them.
type LogConsumer struct {
	// Deliver publishes msgs, read in this order, and reports what became of each.
	Deliver func(ctx context.Context, msgs []store.ClaimedMessage) *store.LogOutcome
	// BatchSize, DeleteDelivered and Status are the reader's [store.LogOptions].
	BatchSize       int
	DeleteDelivered bool
	Status          func(store.LogStatus)
}

// ReadLog opens the change log of r and follows it until ctx ends or reading fails, as a
// dispatcher does but a batch at a time: read, filter, deliver, record. It is for tests of a
// store's log reader.
func ReadLog(ctx context.Context, r store.LogReader, c LogConsumer) (err error) {
	stream, err := r.OpenLog(ctx, store.LogOptions{BatchSize: c.BatchSize, DeleteDelivered: c.DeleteDelivered, Status: c.Status})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := stream.Close(); err == nil {
			err = cerr
		}
	}()
	for {
		b, err := stream.Next(ctx)
		if err != nil {
			return err
		}
		if err := stream.Filter(ctx, b); err != nil {
			return err
		}
		if len(b.Publish) > 0 {
			b.Outcome = *c.Deliver(ctx, b.Publish)
		}
		if err := stream.Record(ctx, []*store.LogBatch{b}); err != nil {
			return err
		}
	}
}
