// Package store defines the outbox message, the write call that puts messages in the caller's
// database transaction, and the contract a store implements so that a dispatcher can deliver
// them.
//
// # Writing
//
// An application writes its domain rows and one or more [Message] values in one database
// transaction with Write ([Writer]), which every [Outbox] offers. Write accepts a *sql.Tx, a bun.Tx, or any other [Execer];
// it runs exactly one INSERT on it (per few thousand messages) and never begins, commits or
// alters the caller's transaction. Invalid messages are rejected before anything is written,
// so the caller's transaction stays usable.
//
// # Delivering
//
// A dispatcher claims due messages with a lease ([Engine.Claim]), publishes them, and then marks
// them delivered ([Engine.MarkDelivered]), records a failed attempt with the time of the next one
// ([Engine.Fail]), parks them after their attempts run out, or gives them back ([Engine.Release]).
// A message is claimed only while no earlier message of the same non-empty key is waiting for a
// retry or held by another claim, so messages with one key go out in the order they were written
// and a failing message holds back only its own key.
//
// # Implementations
//
// The stores in this module are SQL stores (package sqlstore) with one package per database:
// pgstore, mysqlstore and sqlitestore. Their New returns the [Outbox] an application holds;
// its [Engine], which a dispatcher drives, stays out of the application's way. Every engine
// must pass the conformance suite in package storetest.
package store
