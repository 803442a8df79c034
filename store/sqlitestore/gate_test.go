package sqlitestore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store/sqlitestore"
)

func TestKindOfTellsWhatAStatementDoesToTheTurn(t *testing.T) {
	for q, want := range map[string]string{
		"SELECT 1":                                     "reads",
		"  select seq FROM outbox":                     "reads",
		"(SELECT 1) UNION ALL (SELECT 2)":              "reads",
		"-- a comment\nSELECT 1":                       "reads",
		"/* a comment */ SELECT 1":                     "reads",
		"EXPLAIN QUERY PLAN SELECT 1":                  "reads",
		"VALUES (1)":                                   "reads",
		"UPDATE outbox SET state = 'delivered'":        "writes",
		"INSERT INTO outbox (id) VALUES (?)":           "writes",
		"DELETE FROM outbox":                           "writes",
		"WITH x AS (SELECT 1) UPDATE outbox SET a = 1": "writes",
		"PRAGMA journal_mode = WAL":                    "writes",
		"SAVEPOINT a":                                  "writes",
		"ROLLBACK TO a":                                "writes",
		"rollback to savepoint a;":                     "writes",
		"":                                             "writes",
		"BEGIN":                                        "begins",
		"begin immediate;":                             "begins",
		"COMMIT":                                       "ends",
		"END TRANSACTION":                              "ends",
		"ROLLBACK":                                     "ends",
		"rollback;":                                    "ends",
	} {
		require.Equal(t, want, sqlitestore.KindOf(q), q)
	}
}

// A transaction begun with a BEGIN statement on a connection of its own holds the turn until
// its COMMIT: a write of another handle waits for it, and then goes in.
func TestATransactionBegunByStatementHoldsTheTurn(t *testing.T) {
	sqlitestore.SetGateTimeout(t, 300*time.Millisecond)
	ctx := context.Background()
	a := openPayments(t, filepath.Join(t.TempDir(), "app.db"))
	conn, err := a.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()

	_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, "INSERT INTO payments (n) VALUES (1)")
	require.NoError(t, err, "the transaction's own writes go in")
	_, err = a.ExecContext(ctx, "INSERT INTO payments (n) VALUES (2)")
	require.ErrorContains(t, err, "another write of this process held it", "another write waits")

	requireWrittenOnceEnded(t, a, 4, func() error { _, err := conn.ExecContext(ctx, "COMMIT"); return err })
	requireSum(t, a, 1+4)
}

// The handles that Open returns for one file take turns: a write through any of them waits
// while a transaction of another is open, and goes in once it ends. A write that waits longer
// than the busy timeout (here shortened) fails with a clear error and writes nothing, and
// reads outside a transaction do not wait.
func TestHandlesOfOneFileTakeTurnsToWrite(t *testing.T) {
	sqlitestore.SetGateTimeout(t, 300*time.Millisecond)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "app.db")
	a := openPayments(t, path)
	b := openPayments(t, "sqlite://"+path)

	tx, err := a.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "INSERT INTO payments (n) VALUES (1)")
	require.NoError(t, err)

	var n int
	require.NoError(t, b.QueryRowContext(ctx, "SELECT count(*) FROM payments").Scan(&n), "a read passes by")
	require.Zero(t, n)

	_, err = b.ExecContext(ctx, "INSERT INTO payments (n) VALUES (2)")
	require.ErrorContains(t, err, "database is locked: another write of this process held it")
	_, err = a.ExecContext(ctx, "INSERT INTO payments (n) VALUES (3)")
	require.ErrorContains(t, err, "database is locked", "a write through the handle while its own transaction is open")
	prepared, err := b.PrepareContext(ctx, "INSERT INTO payments (n) VALUES (?)")
	require.NoError(t, err)
	defer prepared.Close()
	_, err = prepared.ExecContext(ctx, 7)
	require.ErrorContains(t, err, "database is locked: another write of this process held it", "a prepared write waits too")

	requireWrittenOnceEnded(t, b, 4, tx.Commit)
	requireSum(t, a, 1+4, "the writes that timed out wrote nothing")

	tx, err = a.BeginTx(ctx, nil)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = b.ExecContext(short, "INSERT INTO payments (n) VALUES (5)")
	require.ErrorIs(t, err, context.DeadlineExceeded, "a write stops waiting when its context ends")
	require.NoError(t, tx.Rollback())
	_, err = b.ExecContext(ctx, "INSERT INTO payments (n) VALUES (6)")
	require.NoError(t, err, "a rollback gives the turn back")
}

// openPayments opens dsn with Open, closed when the test ends, with a payments table.
func openPayments(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sqlitestore.Open(dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	_, err = db.Exec("CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, n INTEGER)")
	require.NoError(t, err)
	return db
}

// requireWrittenOnceEnded writes payment n through db while another transaction holds the
// turn, ends that transaction with end, and requires the write to go in then.
func requireWrittenOnceEnded(t *testing.T, db *sql.DB, n int, end func() error) {
	t.Helper()
	written := make(chan error, 1)
	go func() {
		_, err := db.Exec("INSERT INTO payments (n) VALUES (?)", n)
		written <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, end())
	require.NoError(t, <-written)
}

func requireSum(t *testing.T, db *sql.DB, want int, msgAndArgs ...any) {
	t.Helper()
	var sum int
	require.NoError(t, db.QueryRow("SELECT sum(n) FROM payments").Scan(&sum))
	require.Equal(t, want, sum, msgAndArgs...)
}
