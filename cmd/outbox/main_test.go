package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result is what one run of the program did.
type result struct {
	code           int
	stdout, stderr string
}

// outbox runs the program in-process.
func outbox(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// fixture is an outbox of its own in one database, and the flags that name it.
type fixture struct {
	kind  string
	flags []string // --dsn and --table
	db    *sql.DB
	st    dbtest.Store // the application's view of the same outbox
}

// setups make a fixture in each database.
var setups = []struct {
	name  string
	setup func(t *testing.T) fixture
}{
	{"sqlite", sqliteFixture},
	{"postgres", postgresFixture},
	{"mysql", mysqlFixture},
}

// sqliteFixture opens a SQLite file of its own. dbtest.SQLite hides the file's path, which
// the command needs, so the file is opened here the same way.
func sqliteFixture(t *testing.T) fixture {
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sqlitestore.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	return fixture{kind: "sqlite", flags: []string{"--dsn", "file:" + path}, db: db, st: st}
}

// postgresFixture uses a schema of its own, through a schema-qualified --table.
func postgresFixture(t *testing.T) fixture {
	db, schema := dbtest.Postgres(t)
	table := schema + ".outbox"
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{Table: table}))
	require.NoError(t, err)
	return fixture{kind: "postgres", flags: []string{"--dsn", dbtest.PostgresDSN(), "--table", table}, db: db, st: st}
}

// mysqlFixture uses a database of its own, named in the DSN, and the default table.
func mysqlFixture(t *testing.T) fixture {
	db, dsn := dbtest.MySQL(t)
	st, err := dbtest.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	return fixture{kind: "mysql", flags: []string{"--dsn", "mysql://" + dsn}, db: db, st: st}
}

// run runs the program on the fixture's outbox; global flags come first.
func (f fixture) run(t *testing.T, args ...string) result {
	t.Helper()
	return outbox(t, append(append([]string{}, f.flags...), args...)...)
}

// ok runs the program and requires it to succeed; it returns stdout.
func (f fixture) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := f.run(t, args...)
	require.Zero(t, r.code, "outbox %s failed:\n%s%s", strings.Join(args, " "), r.stderr, r.stdout)
	return r.stdout
}

// json runs the program with --json, after the command, and decodes its output into v.
func (f fixture) json(t *testing.T, v any, args ...string) {
	t.Helper()
	out := f.ok(t, append(args, "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), v), out)
}

func (f fixture) status(t *testing.T) statusReport {
	t.Helper()
	var st statusReport
	f.json(t, &st, "status")
	return st
}

// write writes msgs in a transaction of the application's and returns their ids.
func (f fixture) write(t *testing.T, msgs ...store.Message) []string {
	t.Helper()
	tx, err := f.db.Begin()
	require.NoError(t, err)
	ids := make([]string, len(msgs))
	for i := range msgs {
		if msgs[i].ID == "" {
			msgs[i].ID = store.NewID()
		}
		ids[i] = msgs[i].ID
	}
	require.NoError(t, f.st.Write(context.Background(), tx, msgs...))
	require.NoError(t, tx.Commit())
	return ids
}

// settle does what a dispatcher would: it claims every due message, parks those in park with
// lastError, marks those in deliver delivered, and gives the others back.
func (f fixture) settle(t *testing.T, park, deliver []string, lastError string) {
	t.Helper()
	ctx := context.Background()
	res, err := f.st.Claim(ctx, &store.ClaimParams{Limit: 1000, Lease: time.Minute})
	require.NoError(t, err)
	var (
		failures []store.Failure
		release  []string
		parked   int
	)
	for _, m := range res.Messages {
		switch {
		case slices.Contains(park, m.ID):
			failures = append(failures, store.Failure{ID: m.ID, Error: lastError, Park: true})
			parked++
		case slices.Contains(deliver, m.ID):
		default:
			release = append(release, m.ID)
		}
	}
	require.Equal(t, len(park), parked, "every message to park was claimed")
	require.NoError(t, f.st.Fail(ctx, &store.FailParams{Token: res.Token, Failures: failures}))
	require.NoError(t, f.st.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: deliver}))
	require.NoError(t, f.st.Release(ctx, &store.ReleaseParams{Token: res.Token, IDs: release}))
}

var columnGap = regexp.MustCompile(`\S  +`)

// fields parses key-value output: a label, two spaces or more, the value.
func fields(t *testing.T, out string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		loc := columnGap.FindStringIndex(line)
		require.NotNil(t, loc, "line %q has no value column", line)
		kv[line[:loc[0]+1]] = strings.TrimSpace(line[loc[1]:])
	}
	return kv
}
