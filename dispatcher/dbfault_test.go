package dispatcher_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher/kafkapub"
)

// killer ends every database connection of the dispatcher's pool, from another connection.
type killer func(admin *sql.DB) (int, error)

// The dispatcher's database connections are killed twice a second for 5 s while it drains and
// the application writes: every error is retried, nothing is lost or reordered.
func TestKilledDatabaseConnectionsLoseNothing(t *testing.T) {
	const n = 3000
	cases := []struct {
		name  string
		setup func(t *testing.T) (dispatcherDSN string, shared sharedDB, kill killer)
	}{
		{"postgres", func(t *testing.T) (string, sharedDB, killer) {
			shared := sharedPostgres(t)
			app := dbtest.Name("outbox_victim")
			sep := "?"
			if strings.Contains(shared.dsn, "?") {
				sep = "&"
			}
			return shared.dsn + sep + "application_name=" + app, shared, func(admin *sql.DB) (int, error) {
				var killed int
				err := admin.QueryRow("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&killed)
				return killed, err
			}
		}},
		{"mariadb", func(t *testing.T) (string, sharedDB, killer) {
			shared := sharedMySQL(t)
			cfg, err := mysql.ParseDSN(shared.dsn)
			require.NoError(t, err)
			user := dbtest.Name("victim")
			admin, _ := openMySQL(t, shared.dsn, shared.table)
			defer admin.Close()
			_, err = admin.Exec("CREATE USER '" + user + "'@'%'")
			require.NoError(t, err)
			t.Cleanup(func() { admin.Exec("DROP USER '" + user + "'@'%'") })
			_, err = admin.Exec("GRANT ALL ON `" + cfg.DBName + "`.* TO '" + user + "'@'%'")
			require.NoError(t, err)
			cfg.User = user
			return cfg.FormatDSN(), shared, func(admin *sql.DB) (int, error) {
				rows, err := admin.Query("SELECT id FROM information_schema.processlist WHERE user = ?", user)
				if err != nil {
					return 0, err
				}
				var ids []int64
				for rows.Next() {
					var id int64
					if err := rows.Scan(&id); err != nil {
						rows.Close()
						return 0, err
					}
					ids = append(ids, id)
				}
				rows.Close()
				for _, id := range ids {
					admin.Exec(fmt.Sprintf("KILL %d", id)) // it may have gone already
				}
				return len(ids), nil
			}
		}},
	}
	for _, tc := range cases {
		for _, pollOnly := range []bool{false, true} {
			name := tc.name
			if pollOnly {
				name += "-polling"
			}
			t.Run(name, func(t *testing.T) { killConnections(t, n, tc.setup, pollOnly) })
		}
	}
}

// killConnections kills the dispatcher's database connections ten times while messages flow,
// then checks that every message arrived in key order.
func killConnections(t *testing.T, n int, setup func(t *testing.T) (string, sharedDB, killer), pollOnly bool) {
	dsn, shared, kill := setup(t)
	shared.pollOnly = pollOnly
	brokers, admin, st := shared.prepare(t)
	victimDB, victim := shared.open(t, dsn, shared.table)
	defer victimDB.Close()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	require.NoError(t, err)
	defer pub.Close()
	d, err := dispatcher.New(victim, pub, shared.config(dispatcher.Config{BatchSize: 100, Lease: 2 * time.Second, PollInterval: 100 * time.Millisecond, Logger: quiet()}))
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	defer d.Stop(context.Background())

	written := make(chan error, 1)
	go func() { written <- writeSteadily(admin, st, n, 20, 15*time.Millisecond) }()
	total := 0
	for range 10 {
		time.Sleep(500 * time.Millisecond) // the fault's rhythm
		k, err := kill(admin)
		require.NoError(t, err)
		total += k
	}
	require.NoError(t, <-written)
	require.Positive(t, total, "connections were killed")
	waitAllDelivered(t, st, n)
	dups, inversions := readBack(t, brokers, n)
	t.Logf("%s: %d connections killed; 0 lost, %d duplicates, %d inversions", t.Name(), total, dups, inversions)
	require.Zero(t, inversions)
	// A killed claim is given back by its token and a killed record is made again on a new
	// connection: nothing acknowledged is published again.
	require.Zero(t, dups, "duplicates")
}
