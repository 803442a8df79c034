// Package dispatcher publishes the messages of an outbox ([store.Outbox]) through a watermill
// [message.Publisher] and marks them delivered.
//
// # Delivery
//
// A [Dispatcher] claims a batch of due messages with a lease, publishes each through the
// publisher, and marks a message delivered only after the publisher returned success for it.
// Delivery is at least once: a crash between publish and mark publishes a message again. The
// lease is short (Config.Lease, 3 s) so that a crashed dispatcher's messages come back within
// seconds; while a batch is published and recorded the dispatcher extends it, where the store
// implements [store.LeaseExtender]. Each message carries its outbox id as the
// watermill message UUID and in the [publisher.MetadataID] header so consumers can drop such
// duplicates.
//
// # Order
//
// Messages with the same topic and non-empty key are published in write order (the order a
// consumer of the topic can see; Kafka keeps it within the key's partition), whoever wrote
// them and whatever any clock says: a message that never failed is due at once, and the times
// the store compares are the database's; different keys
// are published in parallel (Config.Concurrency), or in one call per topic to a
// [publisher.BatchPublisher], which keeps each key's order within the call. When a message
// fails, it is retried after an exponential backoff with jitter, persisted in the store, and
// only the later messages of its own key wait for it. After Config.MaxAttempts failed attempts,
// or at once when the publisher marks its error [publisher.Permanent], it is parked and its key
// moves on, unless the store keeps strict order (the StrictOrder of its Config): then the key
// waits until the parked message is requeued or deleted.
//
// # Polling and wake-ups
//
// The dispatcher claims again at once while there is work. When the outbox is empty it polls
// with a backoff from a few milliseconds up to Config.PollInterval. Stores that implement
// [store.Notifier] wake it as soon as a message is written, so latency stays low while idle
// polling stays rare.
//
// # Reading the change log
//
// With a store that reads the database's change log ([store.LogReader]: Postgres logical
// replication, the MySQL/MariaDB binlog) the dispatcher takes messages from the log as they
// commit, with no polling load ([ModeLog]). One dispatcher per outbox reads the log; the
// others wait as standbys ([ModeStandby]) and take over within seconds when it goes away.
// Beside the log, a slow sweep claims pending messages older than Config.SweepAfter (counted
// from the last time the reader caught up) that the log did not carry. When the log is not
// usable (no wal_level=logical, no replication privilege, binlog off, slot dropped, position
// purged), the dispatcher logs why once, polls ([ModePolling]), and tries the log again every
// Config.LogRetry. Config.PollOnly turns the log off. After a crash the reader publishes again
// at most the two batches it was recording and publishing.
//
// # Tracing
//
// Write stores the writer's trace context (W3C traceparent) in the message's headers. The
// dispatcher publishes each such message in a "publish <topic>" producer span, a child of the
// writer's span, and hands that span's context to the broker in the traceparent header, where
// the idempotency middleware continues it (Config.TracerProvider).
//
// # Metrics
//
// The dispatcher reports through the OpenTelemetry metric API (Config.MeterProvider):
// outbox.messages.published, outbox.publish.failures and outbox.messages.parked (counters by
// topic), outbox.lease.overrun (claimed messages recorded after their lease ran out, which other
// dispatchers may have published too), outbox.publish.duration, outbox.delivery.latency (from write to acknowledgement) and
// outbox.batch.size (histograms), and, for stores that implement store.Operator,
// outbox.pending, outbox.parked and outbox.lag (gauges with the store's name and mode), and, while
// reading the change log, outbox.log.lag (bytes of log not yet recorded as read) and
// outbox.log.delay (seconds since the moment up to which every message was delivered).
// [Dispatcher.StatusHandler] serves the same health as JSON for readiness probes.
//
// # Lifecycle
//
// [Dispatcher.Start] returns once the dispatcher runs; [Dispatcher.Stop] stops claiming,
// lets in-flight messages finish and returns within its context's deadline. Both are
// idempotent and safe to call concurrently. Cancelling Start's context ends the run abruptly,
// with a warning; [Dispatcher.Mode] then reports [ModeStopped], as it does before Start and
// after Stop. [Dispatcher.Run] blocks until its context ends, for use beside a watermill
// router. [Dispatcher.Drain] delivers what is due synchronously, for tests and scripts.
package dispatcher
