// Package publisher builds watermill publishers set up for the outbox.
//
// [NewKafka] returns a Kafka publisher that sends a whole batch in one round trip, with producer settings that neither lose nor
// reorder messages (acknowledged by all in-sync replicas, idempotent producer, one request in
// flight per broker, bounded retries) and a marshaler that makes the outbox message key the
// Kafka record key, so that messages with one key land on one partition in order. Its wire
// format is watermill-kafka's: watermill's Kafka subscriber reads it unchanged.
//
// # Errors
//
// [NewKafka] checks its configuration but does not dial: the publisher connects on its first
// publish, so an application starts while Kafka is down, and its messages wait in the outbox
// until Kafka answers. Errors that retrying cannot fix (a message larger than the broker
// accepts, an invalid topic name, a message that cannot be marshaled) are marked with
// [dispatcher.Permanent], and the dispatcher parks those messages at once. Everything else is
// retried with the dispatcher's backoff, the key held meanwhile: brokers out of reach, and the
// errors Kafka calls retriable, a topic that does not exist yet among them. Sarama's "circuit
// breaker is open" comes with the error that opened it.
//
// Any other watermill publisher works with the dispatcher as well.
package publisher
