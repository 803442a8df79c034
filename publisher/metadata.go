package publisher

import "github.com/outboxgo/outbox/store"

// Metadata the dispatcher sets on every message it publishes, besides the message's own
// headers. Their names start with [store.ReservedHeaderPrefix], which Write refuses in a
// message's headers, so they never clash with the application's.
const (
	// MetadataID holds the outbox message id, which is also the watermill message UUID.
	// Consumers drop redelivered duplicates by it.
	MetadataID = store.ReservedHeaderPrefix + "id"
	// MetadataKey holds the message key, when it has one; use it as the partition key.
	MetadataKey = store.ReservedHeaderPrefix + "key"
	// MetadataCreatedAt holds the time the message was written, in RFC 3339 with nanoseconds.
	MetadataCreatedAt = store.ReservedHeaderPrefix + "created_at"
	// MetadataError holds, on a dead letter, why the message was parked.
	MetadataError = store.ReservedHeaderPrefix + "error"
	// MetadataTopic holds, on a dead letter, the topic the message was written for.
	MetadataTopic = store.ReservedHeaderPrefix + "topic"
)
