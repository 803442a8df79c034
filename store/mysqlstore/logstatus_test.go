package mysqlstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
)

func TestInspectLogFollowsTheReader(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, _ := dbtest.MySQL(t)
	st := newLogStore(t, db, "")
	var database string
	require.NoError(t, db.QueryRow("SELECT DATABASE()").Scan(&database))

	s, err := mysqlstore.InspectLog(ctx, db, "")
	require.NoError(t, err)
	require.True(t, s.BinlogOn)
	require.Equal(t, "ROW", s.BinlogFormat)
	require.NotEmpty(t, s.LockName)
	require.Zero(t, s.ReaderConnection)
	require.Equal(t, database+".outbox_log_position", s.PositionTable)
	require.Empty(t, s.Problem)
	require.NotNil(t, s.Position, "Migrate stored the position to start from")
	require.NotEmpty(t, s.Position.File)
	require.WithinDuration(t, time.Now(), s.Position.UpdatedAt, time.Minute)
	require.GreaterOrEqual(t, s.LagBytes, int64(0))

	rec := &logRecorder{}
	rr := startReader(t, st, rec)
	require.Eventually(t, func() bool {
		s, err = mysqlstore.InspectLog(ctx, db, "")
		return err == nil && s.ReaderConnection != 0
	}, 15*time.Second, 10*time.Millisecond, "the reader holds the lock InspectLog looks at")
	var sessions int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM information_schema.processlist WHERE id = ?", s.ReaderConnection).Scan(&sessions))
	require.Equal(t, 1, sessions)
	write(t, db, st, store.Message{Topic: "orders", Payload: []byte("1")})
	require.Eventually(t, func() bool { return len(rec.delivered()) == 1 }, 15*time.Second, 10*time.Millisecond)
	before := s.Position.UpdatedAt
	// The batch's outcome and position are recorded while the reader goes on.
	require.Eventually(t, func() bool {
		s, err = mysqlstore.InspectLog(ctx, db, database+".outbox")
		return err == nil && s.Position != nil && s.Position.UpdatedAt.After(before)
	}, 15*time.Second, 10*time.Millisecond, "the batch stored its position")
	require.ErrorIs(t, rr.stop(t), context.Canceled)

	s, err = mysqlstore.InspectLog(ctx, db, "")
	require.NoError(t, err)
	require.Zero(t, s.ReaderConnection, "the lock went with the reader")
	_, err = db.Exec("DELETE FROM outbox_log_position")
	require.NoError(t, err)
	s, err = mysqlstore.InspectLog(ctx, db, "")
	require.NoError(t, err)
	require.Nil(t, s.Position)
	require.EqualValues(t, -1, s.LagBytes)
	require.Empty(t, s.Problem, "the reader stores a position when it starts")

	s, err = mysqlstore.InspectLog(ctx, db, "never_migrated")
	require.NoError(t, err)
	require.Nil(t, s.Position)
	require.Contains(t, s.Problem, "does not exist: run Migrate")

	_, err = mysqlstore.InspectLog(ctx, db, "bad name")
	require.ErrorIs(t, err, store.ErrInvalidTable)
}
