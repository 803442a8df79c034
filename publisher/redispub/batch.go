package redispub

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher"
)

// batch keeps the outcome of a PublishBatch call and each key's order within it.
type batch struct {
	msgs       []*message.Message
	failed     map[string]error // by message UUID
	failedKeys map[string]bool
}

func newBatch(msgs []*message.Message) *batch {
	return &batch{msgs: msgs, failed: map[string]error{}, failedKeys: map[string]bool{}}
}

func (b *batch) key(i int) string { return b.msgs[i].Metadata.Get(publisher.MetadataKey) }

// held reports whether message i must not be sent, an earlier message of its key having
// failed, and records it failed if so.
func (b *batch) held(i int) bool {
	key := b.key(i)
	if key == "" || !b.failedKeys[key] {
		return false
	}
	b.failed[b.msgs[i].UUID] = fmt.Errorf("not sent: an earlier message of key %q failed", key)
	return true
}

// fail records that message i failed with err.
func (b *batch) fail(i int, err error) {
	b.failed[b.msgs[i].UUID] = err
	if key := b.key(i); key != "" {
		b.failedKeys[key] = true
	}
}

// result is what PublishBatch returns. A message acknowledged after an earlier message of
// its key failed is reported failed too: delivered, it would be taken for published ahead
// of the message before it, which the dispatcher publishes again.
func (b *batch) result() error {
	if len(b.failed) == 0 {
		return nil
	}
	failedKey := map[string]bool{}
	for _, m := range b.msgs {
		key := m.Metadata.Get(publisher.MetadataKey)
		if key == "" {
			continue
		}
		if _, failed := b.failed[m.UUID]; failed {
			failedKey[key] = true
		} else if failedKey[key] {
			b.failed[m.UUID] = fmt.Errorf("acknowledged, but reported failed: an earlier message of key %q failed, and this one is to be published again after it", key)
		}
	}
	return &publisher.BatchError{Failed: b.failed}
}
