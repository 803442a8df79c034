// Package publisher is the contract between the outbox dispatcher and the publishers it
// sends messages through. It holds no broker code: the Kafka publisher lives in
// [github.com/outboxgo/outbox/publisher/kafkapub], and any watermill [message.Publisher] works
// with the dispatcher as it is.
//
// # What the dispatcher hands a publisher
//
// Each message is a watermill message whose UUID is the outbox message id, whose payload is
// the written payload, and whose metadata is the written headers plus [MetadataID],
// [MetadataKey] (when the message has a key) and [MetadataCreatedAt], and the writer's W3C
// traceparent when the write was traced. A copy sent to the
// dead-letter topic carries [MetadataError] and [MetadataTopic] too. These names start with
// [store.ReservedHeaderPrefix], which Write refuses in a message's own headers. A publisher
// that partitions should partition by [MetadataKey]: the dispatcher keeps each key's write
// order, and only a publisher that keeps one key on one partition keeps it for consumers.
//
// # Batches
//
// A publisher that implements [BatchPublisher] gets one call per topic for a claimed batch
// instead of one call per message. It must keep each key's order within the call: once a
// message fails, the later messages of its key in the call fail too, unsent. When only some
// messages fail it returns a [*BatchError] naming them, and the dispatcher marks the others
// delivered; any other error fails the whole call.
//
// # Errors
//
// An error is retried by default: the dispatcher retries the message after a backoff and
// holds back the later messages of its key meanwhile, so a broker that is down or a topic not
// created yet delays messages but loses none. An error marked with [Permanent] (a message too
// large for the broker, an invalid topic name, a payload that cannot be encoded) is one no
// retry can fix: the dispatcher parks that message at once and its key moves on. Mark only
// what is wrong with the message itself; a misconfigured cluster is for an operator to fix,
// and its messages should wait for the fix. [IsPermanent] finds the mark through wrapping.
//
// # What is not guaranteed
//
// Delivery is at least once: a publisher may be called again for a message it already sent
// (a crash before the dispatcher recorded the outcome, a lease that ran out). Consumers drop
// duplicates by [MetadataID].
package publisher
