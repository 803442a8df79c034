// Package natspub is a NATS JetStream publisher for the outbox dispatcher: a batch goes out as
// pipelined asynchronous publishes, and the call returns once the server has acknowledged
// every message (or said why not), so that JetStream costs one round trip per batch, not one
// per message.
//
//	pub, err := natspub.New(natspub.Config{URL: "nats://127.0.0.1:4222", AutoProvision: true})
//	if err != nil {
//		return err
//	}
//	defer pub.Close()
//	d, err := dispatcher.New(outbox, pub, dispatcher.Config{})
//
// # Streams, subjects and order
//
// A topic is the subject a message is published to; a JetStream stream must take that
// subject ([Config.AutoProvision] creates one named after the topic, as watermill-nats does
// with JetStream.AutoProvision). A stream stores its messages in the order the server receives
// them, and one stream serves a topic whatever the key: each key's messages are stored in
// write order because the dispatcher hands a key's messages over in write order and the
// publisher sends them in that order on one connection, which the server reads in order. A
// consumer of the stream that processes one message at a time (watermill-nats' subscriber
// does, per subscription) sees each key in write order.
//
// What could put a later message of a key ahead of an earlier one, the publisher rules out:
//
//   - A message published while the connection is reconnecting is refused, not buffered to be
//     sent after the reconnect behind messages that were lost with the old connection: the
//     connection runs with nats.ReconnectBufSize(-1), which [New] sets and checks on a
//     connection it is given.
//   - A message the server answered "no responders" to (no stream yet, a stream leader
//     election) is not sent again by nats.go a moment later, behind the messages that
//     followed it: the publisher asks for no retries, and the dispatcher retries it with its
//     key held.
//   - Once a message of a key fails, the later messages of that key in the batch are reported
//     failed too, acknowledged or not (those not sent yet are not sent), as
//     [publisher.BatchPublisher] requires: the dispatcher publishes them again after it.
//
// # Acknowledgements and duplicates
//
// A message is reported published only once the server acknowledged it, that is, once the
// stream stored it (on a clustered stream, a quorum of its replicas). Each message carries its
// outbox id as Nats-Msg-Id, so that the stream drops a message published again within its
// duplicate window (Duplicates in the stream's configuration, two minutes by default) and
// acknowledges it as a duplicate: a batch whose acknowledgements were lost, or the later
// messages of a key reported failed after an earlier one, do not reach consumers twice when
// they are published again within the window. Past it, consumers drop duplicates by message
// id (see the idempotency middleware).
//
// The wire format is watermill-nats' ([wmnats.NATSMarshaler]: the payload as the message
// data, the UUID and metadata as headers), which watermill-nats' subscribers read as they
// are.
//
// # Errors
//
// [New] does not wait for the server: the connection retries in the background, and until
// it is up, publishes fail with an error that is not [publisher.Permanent], the dispatcher
// retrying them with its backoff and holding their keys. Errors that retrying cannot fix are
// marked with [publisher.Permanent], so that the dispatcher parks the message at once: a topic
// that is not a subject one can publish to (empty tokens, wildcards, white space), a message
// larger than the server's max_payload or the stream's max_msg_size, a message that cannot be
// marshaled, and a header that NATS headers cannot carry unchanged (a name with ':' or white
// space, a value with a line break or leading or trailing white space). Everything else is
// retried: no stream for the subject yet, a stream that is full, a timeout, a lost
// connection.
package natspub
