package mysqlstore_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/storetest"
)

// loseThePosition stores a position the binlog does not hold, as after the files that held it
// were purged (TestReturnToTheLogAfterAPurge in the dispatcher's tests purges for real; a purge
// is server-wide).
func loseThePosition(t *testing.T, db *sql.DB) {
	t.Helper()
	var pos string
	require.NoError(t, db.QueryRow("SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos))
	f := strings.Split(strings.Split(pos, ",")[0], "-")
	_, err := db.Exec("UPDATE outbox_log_position SET gtid_set = ?", f[0]+"-"+f[1]+"-999999999999")
	require.NoError(t, err)
}

func positionRows(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM outbox_log_position").Scan(&n))
	return n
}

// With ManualLogRecovery the reader keeps saying that the position is lost, and leaves it.
func TestReadLogLeavesALostPositionToTheOperator(t *testing.T) {
	db, _ := dbtest.MySQL(t)
	newLogStore(t, db, "")
	st, err := sqlstore.EngineOf(mysqlstore.New(db, mysqlstore.Config{ManualLogRecovery: true}))
	require.NoError(t, err)
	loseThePosition(t, db)
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := storetest.ReadLog(ctx, st, (&logRecorder{}).consumer())
		cancel()
		require.ErrorIs(t, err, store.ErrLogUnavailable)
		require.ErrorContains(t, err, "delete the row of")
		require.Equal(t, 1, positionRows(t, db))
	}
}
