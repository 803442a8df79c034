package main

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// A wrong command line is refused with exit code 2 and a message that says what is wrong,
// before anything touches a database.
func TestRefusesBadCommandLines(t *testing.T) {
	t.Parallel()
	sqlite := "sqlite://" + filepath.Join(t.TempDir(), "outbox.db")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no command", []string{"--dsn", sqlite}, []string{"Usage: outbox", "status", "requeue"}},
		{"unknown command", []string{"--dsn", sqlite, "drain"}, []string{`unknown command "drain"`, "status, parked, requeue, purge, migrate"}},
		{"unknown flag", []string{"--dsn", sqlite, "status", "--verbose"}, []string{"flag provided but not defined: -verbose"}},
		{"stray argument", []string{"--dsn", sqlite, "status", "now"}, []string{`unexpected argument "now"`}},
		{"unknown scheme", []string{"--dsn", "redis://admin:hunter2@cache:6379/0", "status"}, []string{`DSN scheme "redis" is not supported`, "postgres://", "mysql://", "sqlite://", "file:"}},
		{"no scheme", []string{"--dsn", "admin:hunter2@tcp(db:3306)/app", "status"}, []string{"no scheme", "mysql://"}},
		{"empty mysql DSN", []string{"--dsn", "mysql://", "status"}, []string{"mysql DSN is empty", "want mysql://user:pass@tcp(host:3306)/db"}},
		{"URL-style mysql DSN", []string{"--dsn", "mysql://admin:hunter2@db:3306/app", "status"}, []string{"mysql DSN", "want mysql://user:pass@tcp(host:3306)/db"}},
		{"postgres DSN of another form", []string{"--dsn", "postgres://admin:hunter2@db:port/app", "status"}, []string{"postgres DSN", "want postgres://user:pass@host:5432/db"}},
		{"sqlite DSN with parameters", []string{"--dsn", sqlite + "?_pragma=foo", "status"}, []string{"file path only"}},
		{"bad postgres DSN", []string{"--dsn", "postgres://admin:hunter2@[::1", "status"}, []string{"postgres DSN"}},
		{"bad table", []string{"--dsn", sqlite, "--table", "drop table;", "status"}, []string{"invalid table name"}},
		{"requeue without a selection", []string{"--dsn", sqlite, "requeue"}, []string{"say which parked messages", "--id", "--topic", "--key", "--all"}},
		{"requeue all and a topic", []string{"--dsn", sqlite, "requeue", "--all", "--topic", "orders"}, []string{"--all selects every parked message"}},
		{"requeue ids and a topic", []string{"--dsn", sqlite, "requeue", "--id", "x", "--topic", "orders"}, []string{"not both"}},
		{"purge without age", []string{"--dsn", sqlite, "purge"}, []string{"--older-than is required"}},
		{"purge with a bad age", []string{"--dsn", sqlite, "purge", "--older-than", "7 days"}, []string{`--older-than "7 days"`, "7d"}},
		{"purge with a negative age", []string{"--dsn", sqlite, "purge", "--older-than", "-1h"}, []string{"must be positive"}},
		{"parked with a bad limit", []string{"--dsn", sqlite, "parked", "--limit", "0"}, []string{"--limit must be positive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := outbox(t, tc.args...)
			require.Equal(t, exitUsage, r.code, r.stderr)
			require.Empty(t, r.stdout)
			for _, w := range tc.want {
				require.Contains(t, r.stderr, w)
			}
			require.NotContains(t, r.stderr, "hunter2", "a DSN's password is never printed")
		})
	}
	_, err := os.Stat(filepath.Join(filepath.Dir(sqlite[len("sqlite://"):]), "outbox.db"))
	require.ErrorIs(t, err, os.ErrNotExist, "no database was created")

	if os.Getenv("OUTBOX_DSN") == "" {
		r := outbox(t, "status")
		require.Equal(t, exitUsage, r.code)
		require.Contains(t, r.stderr, "set --dsn or OUTBOX_DSN")
	}
	r := outbox(t, "-h")
	require.Equal(t, exitOK, r.code, "help was asked for")
	require.Contains(t, r.stderr, "Usage: outbox")
}

// An outbox that cannot be used makes every command fail with exit code 1 and a message
// that says why and what to do.
func TestReportsUnusableOutbox(t *testing.T) {
	t.Parallel()
	pgDB, schema := dbtest.Postgres(t)
	_, myDSN := dbtest.MySQL(t)
	empty := filepath.Join(t.TempDir(), "empty.db")
	db, err := sqlitestore.Open(empty)
	require.NoError(t, err)
	require.NoError(t, db.Ping()) // creates the file, without the table
	db.Close()

	// A second schema: the first stays unmigrated.
	rights := dbtest.Name("outbox_test")
	_, err = pgDB.Exec("CREATE SCHEMA " + rights)
	require.NoError(t, err)
	t.Cleanup(func() {
		pgDB.Exec("DROP SCHEMA " + rights + " CASCADE")
		dbtest.DropPostgresLog(pgDB, "", rights+"_")
	})
	role := pgRoleWithSelectOnly(t, pgDB, rights)

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"postgres unreachable", []string{"--dsn", "postgres://admin:hunter2@127.0.0.1:1/app?connect_timeout=5", "status"},
			[]string{"cannot reach the postgres database", "connection refused"}},
		{"mysql unreachable", []string{"--dsn", "mysql://admin:hunter2@tcp(127.0.0.1:1)/app?timeout=5s", "parked"},
			[]string{"cannot reach the mysql database", "connection refused"}},
		{"postgres unreachable, migrate", []string{"--dsn", "postgres://admin:hunter2@127.0.0.1:1/app?connect_timeout=5", "migrate"},
			[]string{"cannot reach the postgres database"}},
		{"sqlite file missing", []string{"--dsn", "file:" + filepath.Join(t.TempDir(), "typo.db"), "status"},
			[]string{"cannot reach the sqlite database", "typo.db", "outbox migrate"}},
		{"postgres not migrated", []string{"--dsn", dbtest.PostgresDSN(), "--table", schema + ".outbox", "status"},
			[]string{"table " + schema + ".outbox is missing or not migrated", "run `outbox migrate`"}},
		{"mysql not migrated", []string{"--dsn", "mysql://" + myDSN, "requeue", "--all"},
			[]string{"table outbox is missing or not migrated", "run `outbox migrate`"}},
		{"sqlite not migrated", []string{"--dsn", "sqlite://" + empty, "purge", "--older-than", "1h"},
			[]string{"table outbox is missing or not migrated", "run `outbox migrate`"}},
		{"postgres user without rights", []string{"--dsn", role, "--table", rights + ".outbox", "parked"},
			[]string{"lacks rights on table " + rights + ".outbox", "SELECT, INSERT, UPDATE and DELETE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := outbox(t, tc.args...)
			require.Equal(t, exitFailure, r.code, r.stderr)
			require.Empty(t, r.stdout)
			for _, w := range tc.want {
				require.Contains(t, r.stderr, w)
			}
			require.NotContains(t, r.stderr, "hunter2", "a DSN's password is never printed")
			for _, once := range []string{"not migrated", "lacks rights"} {
				require.LessOrEqual(t, strings.Count(r.stderr, once), 1, "%q is said once:\n%s", once, r.stderr)
			}
		})
	}
}

// pgRoleWithSelectOnly migrates schema.outbox and returns the DSN of a new role that may only
// read it.
func pgRoleWithSelectOnly(t *testing.T, db *sql.DB, schema string) string {
	t.Helper()
	owner, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox"}))
	require.NoError(t, err)
	require.NoError(t, owner.Migrate(context.Background()))
	role := dbtest.Name("outbox_reader")
	_, err = db.Exec("CREATE ROLE " + role + " LOGIN")
	require.NoError(t, err)
	t.Cleanup(func() {
		db.Exec("DROP OWNED BY " + role)
		db.Exec("DROP ROLE " + role)
	})
	for _, q := range []string{"GRANT USAGE ON SCHEMA " + schema + " TO " + role, "GRANT SELECT ON " + owner.Table() + " TO " + role} {
		_, err := db.Exec(q)
		require.NoError(t, err)
	}
	u, err := url.Parse(dbtest.PostgresDSN())
	require.NoError(t, err)
	u.User = url.User(role)
	return u.String()
}
