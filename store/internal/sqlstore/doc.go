// Package sqlstore is the outbox store shared by the SQL databases: one [Store] type whose
// queries differ by [Dialect] (SQLite, Postgres, MySQL/MariaDB). Applications use it through
// the database packages, pgstore, mysqlstore and sqlitestore, which open the database with
// the settings it needs and pass the [Hooks] of what only that database can do: wake-ups
// from other processes, extra migration steps, and reading its change log. Their Store
// embeds [Outbox], the calls an application and an operator make; the [Store] itself is the
// engine that a dispatcher drives (store.Engine), which an application does not see.
//
// # Schema
//
// [Store.Migrate] applies the dialect's migrations, for the configured table name, under a
// lock so that instances starting together apply each step once; the same SQL is in each
// database package's migrations folder for your own migration tool. [Store.Check] names
// what is missing: the database, the table ([store.ErrNotMigrated]) or a right
// ([store.ErrPermission]).
//
// # Claims
//
// Claims take due messages by state, not by an id cursor, with a lease (claimed_until), and
// skip a key while an earlier message of it is pending elsewhere, so that several
// dispatchers keep each key's order. Each claim looks at a window of the oldest pending
// messages and finds the first held message of each key there. On Postgres and MySQL claims
// take turns through a lock held for the claim alone; on SQLite the database lock does that.
//
// # Change log readers
//
// A database package's log stream reads batches of committed messages ([NewLogBatch]);
// [Store.FilterLog] and [Store.RecordLog] are the stream's other two steps: filtering skips
// what polling delivered or holds, and hands a key over to polling behind a message it
// holds; recording marks the outcome, with the reader's position when it keeps one, in one
// transaction.
package sqlstore
