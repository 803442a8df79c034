package publisher

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
)

// BatchPublisher is implemented by publishers that send many messages in one round trip and
// can tell which of them failed. The dispatcher then publishes a claimed batch with one call
// per topic instead of one call per message.
type BatchPublisher interface {
	message.Publisher
	// PublishBatch publishes msgs, all to topic, keeping the order of messages with the same
	// key ([MetadataKey]): once one fails, the later messages of its key must fail too (Kafka
	// fails the rest of a partition's batch; a publisher that checks messages before sending
	// must skip them). It returns nil when every message was acknowledged, a [*BatchError]
	// naming the failed ones when only some were, and any other error when none was.
	PublishBatch(topic string, msgs []*message.Message) error
}

// BatchError reports the messages of a batch that failed; the others were published.
type BatchError struct {
	// Failed maps the UUIDs of the failed messages to their errors.
	Failed map[string]error
}

func (e *BatchError) Error() string {
	ids := make([]string, 0, len(e.Failed))
	for id := range e.Failed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var sb strings.Builder
	fmt.Fprintf(&sb, "outbox: %d messages failed", len(ids))
	for i, id := range ids {
		if i == 3 {
			fmt.Fprintf(&sb, "; and %d more", len(ids)-3)
			break
		}
		fmt.Fprintf(&sb, "; %s: %v", id, e.Failed[id])
	}
	return sb.String()
}

// BatchOutcome keeps what became of the messages of one PublishBatch call, and each key's
// order within it, for publishers that send a batch message by message (pipelined): Held
// says whether a message must not be sent, an earlier message of its key having failed; Fail
// records a failure; Err is what PublishBatch returns.
type BatchOutcome struct {
	msgs       []*message.Message
	failed     map[string]error // by message UUID
	failedKeys map[string]bool
}

// NewBatchOutcome starts the outcome of publishing msgs, in this order.
func NewBatchOutcome(msgs []*message.Message) *BatchOutcome {
	return &BatchOutcome{msgs: msgs, failed: map[string]error{}, failedKeys: map[string]bool{}}
}

func (b *BatchOutcome) key(i int) string { return b.msgs[i].Metadata.Get(MetadataKey) }

// Held reports whether message i must not be sent, an earlier message of its key having
// failed, and records it failed if so.
func (b *BatchOutcome) Held(i int) bool {
	key := b.key(i)
	if key == "" || !b.failedKeys[key] {
		return false
	}
	b.failed[b.msgs[i].UUID] = fmt.Errorf("not sent: an earlier message of key %q failed", key)
	return true
}

// Fail records that message i failed with err.
func (b *BatchOutcome) Fail(i int, err error) {
	b.failed[b.msgs[i].UUID] = err
	if key := b.key(i); key != "" {
		b.failedKeys[key] = true
	}
}

// Err is what PublishBatch returns: nil, or a [*BatchError]. A message acknowledged after an earlier message of
// its key failed is reported failed too: delivered, it would be taken for published ahead
// of the message before it, which the dispatcher publishes again.
func (b *BatchOutcome) Err() error {
	if len(b.failed) == 0 {
		return nil
	}
	failedKey := map[string]bool{}
	for _, m := range b.msgs {
		key := m.Metadata.Get(MetadataKey)
		if key == "" {
			continue
		}
		if _, failed := b.failed[m.UUID]; failed {
			failedKey[key] = true
		} else if failedKey[key] {
			b.failed[m.UUID] = fmt.Errorf("acknowledged, but reported failed: an earlier message of key %q failed, and this one is to be published again after it", key)
		}
	}
	return &BatchError{Failed: b.failed}
}
