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
