// Command outbox shows and repairs an outbox table without hand-written SQL: how many
// messages wait and for how long, whether a dispatcher reads the database's change log, which
// messages are parked and why; it requeues parked messages, purges delivered ones and migrates
// the schema. It works on the three databases of the module's stores (Postgres, MySQL or
// MariaDB, SQLite), through those stores.
//
// Install it, or run it without installing, anywhere with Go installed:
//
//	go install github.com/outboxgo/outbox/cmd/outbox@latest
//	go run github.com/outboxgo/outbox/cmd/outbox@latest [global flags] <command> [flags]
//
// # Global flags
//
// They may come before or after the command.
//
//	--dsn    the database (default $OUTBOX_DSN), one of
//	           postgres://user:pass@host:5432/db?sslmode=disable   (or postgresql://)
//	           mysql://user:pass@tcp(host:3306)/db                  (go-sql-driver's DSN after mysql://)
//	           sqlite:///path/to/app.db  or  file:/path/to/app.db
//	         which is what the stores' Open functions take too, in the application
//	--table  the outbox table, optionally schema-qualified (default "outbox")
//	--json   print one JSON document on stdout instead of text
//
// # Commands
//
//	status                       pending and parked messages (and the keys they are parked
//	                             on), the lag (the age of the oldest
//	                             pending message), deliveries in the last minute, and the
//	                             change log reader: "log" when a dispatcher reads the log
//	                             (a connected replication slot on Postgres, the reader's
//	                             lock held on MySQL), "none" otherwise, and why
//	parked [--limit 100] [--topic t] [--key k]
//	                             parked messages, oldest first, with their last error
//	requeue --id id [--id id...] | --topic t [--key k] | --key k | --all
//	                             make parked messages pending again, due now; it fails
//	                             when an id given with --id names no parked message
//	purge --older-than 7d        delete messages delivered longer ago than that
//	                             (a Go duration such as 36h, or days: 7d, 1d12h)
//	migrate [--print]            create or upgrade the table; --print shows the SQL of
//	                             every step for this database and table, without connecting
//	serve [--addr 127.0.0.1:8080] [--read-only] [--allow-remote]
//	                             serve the operator console (package dispatcher/console) in
//	                             the browser; it has no authentication of its own, so it
//	                             listens on loopback unless --allow-remote
//
// For example:
//
//	export OUTBOX_DSN='postgres://app@db:5432/app'
//	outbox status
//	outbox parked --topic orders
//	outbox requeue --topic orders
//	outbox --json status | jq .log
//
// # Exit codes
//
// 0 on success; 1 when the command failed: the database cannot be reached (the DSN's
// password never appears), the table is not migrated (run outbox migrate), the user lacks
// rights on it, an id given to requeue --id names no parked message; 2 when the command line is wrong (an unknown command or flag, a DSN of no
// supported form, requeue without a selection), and nothing was done. Every command but
// migrate first checks that the table is usable.
//
// # What it does not do
//
// status reads the database, not the dispatchers: a polling dispatcher leaves no trace there
// while it finds nothing to claim, so log mode "none" means that no reader is connected to
// the log, whether dispatchers poll or none runs; a running dispatcher's own Mode and status
// handler say which. Where a purge is already running on the database, purge deletes
// nothing and says 0.
package main
