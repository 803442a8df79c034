// Package publisher builds watermill publishers set up for the outbox.
//
// [NewKafka] returns a Kafka publisher that sends a whole batch in one round trip, with producer settings that neither lose nor
// reorder messages (acknowledged by all in-sync replicas, idempotent producer, one request in
// flight per broker, bounded retries) and a marshaler that makes the outbox message key the
// Kafka record key, so that messages with one key land on one partition in order. Its wire
// format is watermill-kafka's: watermill's Kafka subscriber reads it unchanged.
//
// [NewKafka] checks its configuration but does not dial: the publisher connects on its first
// publish, so an application starts while Kafka is down. Until Kafka answers, publishes fail
// with an error that is not [dispatcher.Permanent]: the dispatcher retries them with backoff,
// holding their keys, and the messages go out once Kafka is up.
//
// Any other watermill publisher works with the dispatcher as well.
package publisher
