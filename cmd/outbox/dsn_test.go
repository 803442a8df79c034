package main

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// The DSN an operator gives the program is the DSN the application gives the store's Open:
// a message the application writes through one is what the program sees through the other.
func TestOneDSNServesTheProgramAndTheApplication(t *testing.T) {
	_, pgSchema := dbtest.Postgres(t)
	_, myDSN := dbtest.MySQL(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, dsn, table string
		open             func(string) (*sql.DB, error)
		new              func(*sql.DB, pgstore.Config) (outboxStore, error)
	}{
		{"postgres", dbtest.PostgresDSN(), pgSchema + ".outbox", pgstore.Open, postgresBackend.new},
		{"mysql", "mysql://" + myDSN, "outbox", mysqlstore.Open, mysqlBackend.new},
		{"sqlite", "sqlite://" + filepath.Join(dir, "a.db"), "outbox", sqlitestore.Open, sqliteBackend.new},
		{"sqlite file:", "file:" + filepath.Join(dir, "b.db"), "outbox", sqlitestore.Open, sqliteBackend.new},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags := []string{"--dsn", tc.dsn, "--table", tc.table}
			r := outbox(t, append(flags, "migrate")...)
			require.Zero(t, r.code, r.stderr)

			db, err := tc.open(tc.dsn)
			require.NoError(t, err)
			defer db.Close()
			st, err := tc.new(db, pgstore.Config{Table: tc.table})
			require.NoError(t, err)
			require.NoError(t, st.Write(context.Background(), db, store.Message{Topic: "orders", Payload: []byte("1")}))

			r = outbox(t, append(flags, "status", "--json")...)
			require.Zero(t, r.code, r.stderr)
			require.Contains(t, r.stdout, `"pending": 1,`)
		})
	}
}
