// Package store defines the outbox message, the write call that puts messages in the caller's
// database transaction, and the contract a store implements so that a dispatcher can deliver
// them.
//
// # Writing
//
// An application writes its domain rows and one or more [Message] values in one database
// transaction with [Store.Write]. Write accepts a *sql.Tx, a bun.Tx, or any other [Execer];
// it runs exactly one INSERT on it (per few thousand messages) and never begins, commits or
// alters the caller's transaction. Invalid messages are rejected before anything is written,
// so the caller's transaction stays usable.
//
// # Delivering
//
// A dispatcher claims due messages with a lease ([Store.Claim]), publishes them, and then marks
// them delivered ([Store.MarkDelivered]), records a failed attempt with the time of the next one
// ([Store.Fail]), parks them after their attempts run out, or gives them back ([Store.Release]).
// A message is claimed only while no earlier message of the same non-empty key is waiting for a
// retry or held by another claim, so messages with one key go out in the order they were written
// and a failing message holds back only its own key.
//
// # Implementations
//
// The stores in this module are SQL stores (package sqlstore) with one constructor package per
// database: sqlitestore for SQLite. Every implementation must pass the conformance suite in
// package storetest.
package store
