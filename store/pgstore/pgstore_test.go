package pgstore_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newStore(t *testing.T) (*sqlstore.Store, *sql.DB) {
	t.Helper()
	db, schema := dbtest.Postgres(t)
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox"}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st, db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		st, db := newStore(t)
		return storetest.Harness{Store: st, DB: db}
	})
}

func TestLogConformance(t *testing.T) {
	storetest.RunLog(t, func(t *testing.T) storetest.LogHarness {
		st, db := newStore(t)
		slot := slotOf(t, db, st.QualifiedName())
		return storetest.LogHarness{
			Harness: storetest.Harness{Store: st, DB: db},
			Another: func(t *testing.T) store.Engine {
				other, err := pgstore.Open(dbtest.PostgresDSN())
				require.NoError(t, err)
				t.Cleanup(func() { other.Close() })
				st, err := sqlstore.EngineOf(pgstore.New(other, pgstore.Config{Table: st.QualifiedName()}))
				require.NoError(t, err)
				return st
			},
			Position: func(t *testing.T) string {
				var lsn sql.NullString
				require.NoError(t, db.QueryRow("SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&lsn))
				return lsn.String
			},
			Interrupt: func(t *testing.T) {
				require.Eventually(t, func() bool {
					var killed sql.NullBool
					err := db.QueryRow("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&killed)
					return err == nil && killed.Bool
				}, 10*time.Second, 10*time.Millisecond, "the slot's walsender")
			},
			LoseLog: func(t *testing.T) {
				// A reader that just stopped may leave its walsender a moment, which holds
				// the slot.
				require.Eventually(t, func() bool {
					db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", slot)
					_, err := db.Exec("SELECT pg_drop_replication_slot($1)", slot)
					return err == nil
				}, 10*time.Second, 20*time.Millisecond)
			},
		}
	})
}

func TestCapabilities(t *testing.T) {
	st, _ := newStore(t)
	require.Equal(t, store.Capabilities{Name: "postgres", SkipLocked: true, CrossProcessNotify: true, ChangeLog: true}, st.Capabilities())
}

func TestMigrateIsIdempotentAndCheckNeedsIt(t *testing.T) {
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".events"}))
	require.NoError(t, err)
	require.ErrorIs(t, st.Check(ctx), store.ErrNotMigrated)
	require.ErrorIs(t, st.Write(ctx, db, store.Message{Topic: "t"}), store.ErrNotMigrated, "Write names the missing table too")
	// Concurrent start-ups migrate once.
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- st.Migrate(ctx) }()
	}
	for range 3 {
		require.NoError(t, <-errs)
	}
	require.NoError(t, st.Check(ctx))
}

func TestCheckNamesMissingRights(t *testing.T) {
	ctx := context.Background()
	db, schema := dbtest.Postgres(t)
	owner, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{Table: schema + ".outbox"}))
	require.NoError(t, err)
	require.NoError(t, owner.Migrate(ctx))

	readerDB, _ := openAsRole(t, db, "outbox_reader", "GRANT USAGE ON SCHEMA "+schema+" TO %[1]s", "GRANT SELECT ON "+owner.Table()+" TO %[1]s")
	reader, err := sqlstore.EngineOf(pgstore.New(readerDB, pgstore.Config{Table: schema + ".outbox"}))
	require.NoError(t, err)
	err = reader.Check(ctx)
	require.ErrorIs(t, err, store.ErrPermission, "a reader may not claim or mark")
	require.ErrorContains(t, err, "needs SELECT, INSERT, UPDATE and DELETE")
}

func TestCheckReportsUnreachableDatabase(t *testing.T) {
	db, err := pgstore.Open("postgres://nobody:secret-password@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	defer db.Close()
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{}))
	require.NoError(t, err)
	err = st.Check(context.Background())
	require.ErrorContains(t, err, "cannot reach the postgres database")
	require.NotContains(t, err.Error(), "secret-password")
}

func TestRefusesOtherDrivers(t *testing.T) {
	db := dbtest.SQLite(t)
	_, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{}))
	require.ErrorContains(t, err, "open it with pgstore.Open")
	_, err = sqlstore.EngineOf(pgstore.New(nil, pgstore.Config{}))
	require.Error(t, err)
}

func TestOpenRejectsBadDSN(t *testing.T) {
	_, err := pgstore.Open("postgres://user:hunter2@[bad")
	require.ErrorContains(t, err, "postgres DSN")
	require.NotContains(t, err.Error(), "hunter2")
}

var update = flag.Bool("update", false, "rewrite the migration files in migrations/")

func TestMigrationFilesMatchMigrate(t *testing.T) {
	db, err := pgstore.Open(dbtest.PostgresDSN()) // not connected: only the SQL is needed
	require.NoError(t, err)
	defer db.Close()
	st, err := sqlstore.EngineOf(pgstore.New(db, pgstore.Config{}))
	require.NoError(t, err)
	steps, err := st.Migrations()
	require.NoError(t, err)
	var files []dbtest.MigrationFile
	for _, m := range steps {
		files = append(files, dbtest.MigrationFile(m))
	}
	dbtest.RequireMigrationFiles(t, "migrations", files, *update)
}

// openAsRole creates a login role named after name, runs grants (formats of the role's name)
// through db, and opens a database handle as that role; both go away with the test.
func openAsRole(t *testing.T, db *sql.DB, name string, grants ...string) (*sql.DB, string) {
	t.Helper()
	role := dbtest.Name(name)
	_, err := db.Exec("CREATE ROLE " + role + " LOGIN")
	require.NoError(t, err)
	t.Cleanup(func() {
		db.Exec("DROP OWNED BY " + role)
		db.Exec("DROP ROLE " + role)
	})
	for _, g := range grants {
		_, err := db.Exec(fmt.Sprintf(g, role))
		require.NoError(t, err)
	}
	cfg, err := pgx.ParseConfig(dbtest.PostgresDSN())
	require.NoError(t, err)
	cfg.User = role
	roleDB := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { roleDB.Close() })
	return roleDB, role
}
