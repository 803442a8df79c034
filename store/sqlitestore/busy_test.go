package sqlitestore_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Four writers, each writing a domain row and a message per transaction, while two claimers
// claim and mark: with Open's settings no call fails with SQLITE_BUSY, and every message is
// delivered once.
func TestConcurrentWritersAndClaimersDoNotGetBusy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := openDB(t)
	st, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	_, err = db.ExecContext(ctx, "CREATE TABLE payments (id INTEGER PRIMARY KEY, n INTEGER)")
	require.NoError(t, err)

	const writers, perWriter, claimers = 4, 150, 2
	var (
		wg        sync.WaitGroup
		errs      = make(chan error, writers+claimers)
		writing   atomic.Int32
		delivered atomic.Int64
	)
	writing.Store(writers)
	for w := range writers {
		wg.Go(func() {
			defer writing.Add(-1)
			for i := range perWriter {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					errs <- err
					return
				}
				if _, err := tx.ExecContext(ctx, "INSERT INTO payments (n) VALUES (?)", i); err != nil {
					tx.Rollback()
					errs <- err
					return
				}
				if err := st.Write(ctx, tx, store.Message{Topic: "t", Key: fmt.Sprintf("w%d", w), Payload: []byte("x")}); err != nil {
					tx.Rollback()
					errs <- err
					return
				}
				if err := tx.Commit(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range claimers {
		wg.Go(func() {
			for writing.Load() > 0 || delivered.Load() < writers*perWriter {
				res, err := st.Claim(ctx, &store.ClaimParams{Limit: 50, Lease: time.Minute})
				if err != nil {
					errs <- err
					return
				}
				ids := make([]string, len(res.Messages))
				for i, m := range res.Messages {
					ids[i] = m.ID
				}
				if err := st.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids}); err != nil {
					errs <- err
					return
				}
				delivered.Add(int64(len(ids)))
				if len(ids) == 0 {
					time.Sleep(time.Millisecond) // idle poll
				}
				if ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, writers*perWriter, delivered.Load())
}
