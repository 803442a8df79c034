package mysqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		db, _ := dbtest.MySQL(t)
		st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
		require.NoError(t, err)
		require.NoError(t, st.Migrate(context.Background()))
		return storetest.Harness{Store: st, DB: db}
	})
}

func TestLogConformance(t *testing.T) {
	storetest.RunLog(t, func(t *testing.T) storetest.LogHarness {
		db, dsn := dbtest.MySQL(t)
		newLogStore(t, db, "")
		// The reader runs as a user of its own, whose sessions Interrupt finds among the
		// other tests'; the suite writes as another, whose sessions it leaves alone.
		u := createUser(t, db, dsn, "ALL PRIVILEGES ON {db}.*", "REPLICATION SLAVE, REPLICATION CLIENT ON *.*")
		st := openStore(t, u.dsn)
		var interrupts int
		return storetest.LogHarness{
			Harness: storetest.Harness{Store: st, DB: db},
			Another: func(t *testing.T) store.Engine {
				return openStore(t, dsn)
			},
			Position: func(t *testing.T) string {
				var gtids string
				err := db.QueryRow("SELECT gtid_set FROM outbox_log_position WHERE id = 1").Scan(&gtids)
				if errors.Is(err, sql.ErrNoRows) {
					return ""
				}
				require.NoError(t, err)
				return gtids
			},
			// Each call ends one way the reader can lose its server in turn: the binlog
			// stream, or its idle sessions, among them the lock's (the reader must stop, as
			// another instance may take the lock over).
			Interrupt: func(t *testing.T) {
				sessions := []string{"command LIKE 'Binlog Dump%'", "command = 'Sleep'"}[interrupts%2]
				interrupts++
				killSessions(t, db, u.name, sessions)
			},
			LoseLog: func(t *testing.T) { loseThePosition(t, db) },
		}
	})
}

func TestCapabilities(t *testing.T) {
	db, _ := dbtest.MySQL(t)
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	require.Equal(t, store.Capabilities{Name: "mysql", SkipLocked: true, ChangeLog: true}, st.Capabilities())
}

func TestMigrateIsIdempotentAndCheckNeedsIt(t *testing.T) {
	ctx := context.Background()
	db, _ := dbtest.MySQL(t)
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{Table: "events"}))
	require.NoError(t, err)
	require.ErrorIs(t, st.Check(ctx), store.ErrNotMigrated)
	require.ErrorIs(t, st.Write(ctx, db, store.Message{Topic: "t"}), store.ErrNotMigrated, "Write names the missing table too")
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
	db, dsn := dbtest.MySQL(t)
	owner, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	require.NoError(t, owner.Migrate(ctx))

	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	user := dbtest.Name("reader")
	_, err = db.Exec("CREATE USER '" + user + "'@'%'")
	require.NoError(t, err)
	t.Cleanup(func() { db.Exec("DROP USER '" + user + "'@'%'") })
	_, err = db.Exec("GRANT SELECT ON `" + cfg.DBName + "`.* TO '" + user + "'@'%'")
	require.NoError(t, err)

	cfg.User, cfg.Passwd = user, ""
	readerDB, err := mysqlstore.Open(cfg.FormatDSN())
	require.NoError(t, err)
	defer readerDB.Close()
	reader, err := sqlstore.EngineOf(mysqlstore.New(readerDB, mysqlstore.Config{}))
	require.NoError(t, err)
	err = reader.Check(ctx)
	require.ErrorIs(t, err, store.ErrPermission)
	require.ErrorContains(t, err, "needs SELECT, INSERT, UPDATE and DELETE")
}

func TestCheckReportsUnreachableDatabase(t *testing.T) {
	db, err := mysqlstore.Open("nobody:secret-password@tcp(127.0.0.1:1)/none?timeout=2s")
	require.NoError(t, err)
	defer db.Close()
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	err = st.Check(context.Background())
	require.ErrorContains(t, err, "cannot reach the mysql database")
	require.NotContains(t, err.Error(), "secret-password")
}

func TestOpenRejectsBadDSN(t *testing.T) {
	_, err := mysqlstore.Open("user:hunter2@tcp(127.0.0.1:3306")
	require.ErrorContains(t, err, "mysql DSN")
	require.NotContains(t, err.Error(), "hunter2")
	_, err = sqlstore.EngineOf(mysqlstore.New(nil, mysqlstore.Config{}))
	require.Error(t, err)
}

var update = flag.Bool("update", false, "rewrite the migration files in migrations/")

func TestMigrationFilesMatchMigrate(t *testing.T) {
	db, err := mysqlstore.Open(dbtest.MySQLDSN()) // not connected: only the SQL is needed
	require.NoError(t, err)
	defer db.Close()
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{}))
	require.NoError(t, err)
	steps, err := st.Migrations()
	require.NoError(t, err)
	var files []dbtest.MigrationFile
	for _, m := range steps {
		files = append(files, dbtest.MigrationFile(m))
	}
	dbtest.RequireMigrationFiles(t, "migrations", files, *update)
}

// A claim does not pass over an earlier message of a key that another session has locked
// (MySQL locks every row an UPDATE scans) to take a later one: it claims both, in order, once
// the lock is gone.
func TestClaimDoesNotPassOverALockedEarlierMessageOfItsKey(t *testing.T) {
	ctx := context.Background()
	db, _ := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	first := store.Message{ID: "first", Topic: "t", Key: "k", Payload: []byte("1")}
	later := store.Message{ID: "later", Topic: "t", Key: "k", Payload: []byte("2")}
	write(t, db, st, first, later)

	locker, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer locker.Rollback()
	var seq, lockerID int64
	require.NoError(t, locker.QueryRowContext(ctx, "SELECT seq, CONNECTION_ID() FROM outbox WHERE id = ? FOR UPDATE", first.ID).Scan(&seq, &lockerID))
	type claimed struct {
		res *store.ClaimResult
		err error
	}
	done := make(chan claimed, 1)
	go func() {
		res, err := st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute})
		done <- claimed{res, err}
	}()
	// The claim meets the lock: it waits for the locker's transaction (or has returned,
	// which the check below then fails).
	require.Eventually(t, func() bool {
		var waiting int
		err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w
			JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id WHERE b.trx_mysql_thread_id = ?`, lockerID).Scan(&waiting)
		return err == nil && waiting > 0 || len(done) > 0
	}, 10*time.Second, 150*time.Millisecond) // InnoDB refreshes these tables at most every 100 ms
	require.Empty(t, done, "the claim took its messages while the earlier one was locked")
	require.NoError(t, locker.Commit())
	c := <-done
	res, err := c.res, c.err
	require.NoError(t, err)
	var ids []string
	for _, m := range res.Messages {
		ids = append(ids, m.ID)
	}
	require.Equal(t, []string{first.ID, later.ID}, ids)
}

// A claim updates the messages it picked only if none changed since it read them: one that
// a log reader marked delivered meanwhile makes it give back what it took and claim nothing
// this time, rather than a batch with a gap. Nothing stays claimed, and the next claim takes
// the rest.
func TestClaimGivesBackWhatChangedAfterThePick(t *testing.T) {
	ctx := context.Background()
	db, _ := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	ids, err := store.WriteIDs(ctx, st, db,
		store.Message{Topic: "t", Key: "k", Payload: []byte("1")},
		store.Message{Topic: "t", Key: "k", Payload: []byte("2")},
		store.Message{Topic: "t", Key: "j", Payload: []byte("3")})
	require.NoError(t, err)

	restore := sqlstore.SetPickedHook(func() {
		_, err := db.Exec("UPDATE outbox SET state = 'delivered', delivered_at = NOW(6) WHERE id = ?", ids[0])
		require.NoError(t, err)
	})
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute})
	restore()
	require.NoError(t, err)
	require.Empty(t, res.Messages)
	var claimed int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM outbox WHERE claimed_until > '1970-01-01'").Scan(&claimed))
	require.Zero(t, claimed, "what the claim took is given back")

	res, err = st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	var got []string
	for _, m := range res.Messages {
		got = append(got, m.ID)
	}
	require.Equal(t, ids[1:], got)
}
