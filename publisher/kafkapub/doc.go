// Package kafkapub is a Kafka publisher for the outbox dispatcher, built on sarama and set up so
// that it neither loses nor reorders messages.
//
//	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
//	if err != nil {
//		return err
//	}
//	defer pub.Close()
//	d, err := dispatcher.New(outbox, pub, dispatcher.Config{})
//
// # Batches and order
//
// [Publisher] implements [publisher.BatchPublisher]: a claimed batch goes out in one produce
// request per broker and round trip, and a partial failure names the messages that failed.
// Its producer settings ([SaramaConfig]) wait for all in-sync replicas, use the idempotent
// producer with one request in flight per broker and retry a bounded number of times, so that
// an acknowledged message is neither lost nor overtaken. [Marshaler] makes the outbox message
// key ([publisher.MetadataKey]) the record key, so the messages of one key land on one
// partition in write order. The wire format is watermill-kafka's: watermill's Kafka
// subscriber reads it with [Marshaler] as its Unmarshaler.
//
// This package's name is the same as watermill-kafka's; a program that uses both imports one
// of them under another name.
//
// # Errors
//
// [New] checks its configuration but does not dial: the publisher connects on its first
// publish, so an application starts while Kafka is down, and its messages wait in the outbox
// until Kafka answers. Errors that retrying cannot fix (a message larger than the broker
// accepts, an invalid topic name, a message that cannot be marshaled) are marked with
// [publisher.Permanent], and the dispatcher parks those messages at once. Everything else is
// retried with the dispatcher's backoff, the key held meanwhile: brokers out of reach, and the
// errors Kafka calls retriable, a topic that does not exist yet among them. Sarama's "circuit
// breaker is open" comes with the error that opened it.
//
// # Size
//
// The producer refuses, before sending, a message or a batch that a broker with default
// settings would refuse (see [SaramaConfig]), and the stores' default payload limit leaves
// room under it for the key and headers: a payload as large as Write accepts by default is
// delivered. For a broker or topic with a lower limit, lower Producer.MaxMessageBytes and the
// store's MaxPayloadBytes with it.
package kafkapub
