package sqlitestore_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
	"github.com/outboxgo/outbox/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		db := openDB(t)
		st, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
		require.NoError(t, err)
		require.NoError(t, st.Migrate(context.Background()))
		return storetest.Harness{Store: st, DB: db}
	})
}

func TestJournalModeIsWAL(t *testing.T) {
	db := openDB(t)
	var mode string
	require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
	require.Equal(t, "wal", mode)
}

func TestMigrateIsIdempotentAndCheckNeedsIt(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	st, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{Table: "events_outbox"}))
	require.NoError(t, err)
	require.ErrorIs(t, st.Check(ctx), store.ErrNotMigrated, "a database without the table")
	require.ErrorIs(t, st.Write(ctx, db, store.Message{Topic: "t"}), store.ErrNotMigrated, "Write names the missing table too")
	require.NoError(t, st.Migrate(ctx))
	require.NoError(t, st.Migrate(ctx), "a second run applies nothing")
	require.NoError(t, st.Check(ctx))
	var applied int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM "events_outbox_migrations"`).Scan(&applied))
	steps, err := st.Migrations()
	require.NoError(t, err)
	require.Equal(t, len(steps), applied)
}

func TestInvalidTableNames(t *testing.T) {
	db := openDB(t)
	for _, name := range []string{"outbox; DROP TABLE x", `out"box`, "1outbox", "a.b.c", "a b", "main.", "ünïcode"} {
		_, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{Table: name}))
		require.ErrorIs(t, err, store.ErrInvalidTable, name)
	}
	_, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{MaxPayloadBytes: -1}))
	require.Error(t, err)
	_, err = sqlstore.EngineOf(sqlitestore.New(nil, sqlitestore.Config{}))
	require.Error(t, err)
}

func TestPayloadLimitIsConfigurable(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	st, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{MaxPayloadBytes: 10}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	require.ErrorIs(t, st.Write(ctx, db, store.Message{Topic: "t", Payload: make([]byte, 11)}), store.ErrPayloadTooLarge)
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "t", Payload: make([]byte, 10)}))
}

var update = flag.Bool("update", false, "rewrite the migration files in migrations/")

// The files in migrations/ are the schema for the default table name, for users who run
// migrations with their own tool. They must match what Migrate applies.
func TestMigrationFilesMatchMigrate(t *testing.T) {
	st, err := sqlstore.EngineOf(sqlitestore.New(openDB(t), sqlitestore.Config{}))
	require.NoError(t, err)
	steps, err := st.Migrations()
	require.NoError(t, err)
	require.NotEmpty(t, steps)
	for _, m := range steps {
		path := filepath.Join("migrations", sqlFileName(m.Version, m.Name))
		if *update {
			require.NoError(t, os.WriteFile(path, []byte(m.SQL), 0o644))
			continue
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err, "run: go test ./store/sqlitestore -run TestMigrationFiles -update")
		require.Equal(t, m.SQL, string(got), "%s is stale: run go test ./store/sqlitestore -run TestMigrationFiles -update", path)
	}
}

func sqlFileName(version int, name string) string {
	return fmt.Sprintf("%04d_%s.up.sql", version, name)
}
