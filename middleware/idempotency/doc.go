// Package idempotency is a watermill handler middleware for consumers that turns at-least-once
// delivery into effectively-once processing: it drops messages whose id (the watermill message
// UUID; the dispatcher sets it to the outbox id) was already processed, using an inbox table in
// the consumer's own database.
//
// # How it works
//
// For each message, [Inbox.Middleware] begins a transaction, inserts the message id into the
// inbox table without failing on a duplicate, and looks at how many rows it inserted. None: the
// id was processed before, the message is acknowledged and the handler is not called. One: the
// handler runs with the transaction in the message's context ([TxFromContext]); if it returns
// an error the transaction rolls back, the id is forgotten with the handler's writes, and the
// redelivery is processed again. Two deliveries of the same id at the same time are serialised
// by the table's primary key: the second waits for the first transaction and then sees a
// duplicate (or, if the first rolled back, processes the message itself).
//
// # What is guaranteed
//
// Every effect the handler writes through the transaction from [TxFromContext] happens exactly
// once per message id, because it commits or rolls back together with the id.
//
// # What is not
//
// Effects outside that transaction: calling another service, publishing through a separate
// publisher, sending mail, writing through the *bun.DB instead of the transaction, or writing
// to another database. They happen at least once, and also when the transaction later fails to
// commit; make them idempotent themselves. Messages produced by the handler are returned only
// after the commit, but the router publishes them afterwards, at least once.
//
// An id is remembered for Config.Retention, counted from when it was processed. A redelivery
// that arrives later than that (a dispatcher down for longer, a replay) is processed again.
//
// # Using it
//
// Create the table once with [Inbox.Migrate], then add the middleware after the ones that
// retry or recover, so that every attempt gets a transaction of its own:
//
//	router.AddMiddleware(middleware.Recoverer, retry.Middleware, inbox.Middleware)
//
// The transaction is open while the handler runs, so keep handlers short: on Postgres and MySQL
// it holds a connection and its row locks, and on SQLite it holds the database's only write
// lock, so a handler that writes through the *bun.DB instead of the transaction waits for
// itself until the busy timeout.
//
// A message with an empty id, or one that cannot be stored (more than 64 bytes, invalid UTF-8,
// NUL), is refused with an error wrapping [ErrNoMessageID] rather than processed without
// protection or silently acknowledged; the router nacks it, so route such messages to a poison
// queue.
//
// Run [Inbox.Cleanup] periodically (an hour is plenty) to delete ids older than the retention.
//
// [Memory] is an in-memory stand-in for unit tests of handlers; it has no transaction and
// forgets everything when the process ends.
package idempotency
