package pgstore

import (
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// dialect is the SQL of PostgreSQL 12 or later.
var dialect = sqlstore.Dialect{
	Name:      "postgres",
	Quote:     '"',
	Numbered:  true,
	MaxParams: 65535,
	Epoch:     "'1970-01-01 00:00:00+00'",
	// The start of the statement, not of its transaction (now()): a claim's transaction may
	// wait for its turn.
	Now:      "statement_timestamp()",
	Interval: "(%s * interval '1 microsecond')",
	Claims:   sqlstore.ClaimsInTurnsInATransaction,
	// The turn is released at commit; the claim's UPDATE takes its snapshot after it is
	// granted. The commit need not wait for the WAL flush: a claim lost in a server crash only
	// makes its messages claimable again. The claim walks the pending index in seq order and
	// stops at its LIMIT; statistics taken while few messages were pending (a backlog grows
	// faster than autovacuum analyzes) would have the planner read every pending row and sort
	// them, on every claim: so bitmap and sequential scans are off for the transaction. JIT
	// is off too: on a large backlog the claim's estimated cost passes jit_above_cost, and its
	// prepared plan was compiled again on every claim (11 of 17 ms on 200,000 pending).
	ClaimTurn: "SELECT set_config('synchronous_commit', 'off', true), set_config('enable_bitmapscan', 'off', true), " +
		"set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true), pg_advisory_xact_lock($1)",
	// Postgres delivers the notification when the writer's transaction commits, once per
	// channel and transaction however many statements sent it. A conflicting id would abort
	// the writer's transaction: the INSERT skips it, and Write undoes the rest.
	NotifyWrite: func(insert, channel string) string {
		return "WITH written AS (" + insert + " ON CONFLICT (id) DO NOTHING RETURNING seq) SELECT count(*), min(seq), pg_notify(" +
			channel + ", '') FROM written"
	},
	AsyncCommit: "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit",
	// = ANY(ARRAY(...)) keeps the planner on the primary key.
	DeleteUpTo: "DELETE FROM %[1]s WHERE seq = ANY(ARRAY(SELECT seq FROM %[1]s WHERE %[2]s LIMIT %[3]s))",
	Schema:     schema,
	Classify:   classify,
}

// classify tells the errors that Write and Check report as the store's own.
func classify(err error) error {
	switch sqlState(err) {
	case codeUndefinedTable, codeUndefinedColumn, codeInvalidSchemaName:
		return store.ErrNotMigrated
	case codeInsufficientPrivilege:
		return store.ErrPermission
	case codeUniqueViolation:
		return store.ErrDuplicateID
	}
	return nil
}
