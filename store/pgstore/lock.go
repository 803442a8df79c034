package pgstore

import (
	"context"
	"database/sql"
	"time"

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// lock takes the table's advisory lock for purpose on conn: waiting at most wait, or with
// wait 0 only if it is free.
func lock(ctx context.Context, conn *sql.Conn, s *sqlstore.Store, purpose string, wait time.Duration) (func(), bool, error) {
	key := s.LockKey(purpose)
	if wait == 0 {
		var got bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil || !got {
			return nil, false, err
		}
	} else {
		lctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		if _, err := conn.ExecContext(lctx, "SELECT pg_advisory_lock($1)", key); err != nil {
			return nil, false, err
		}
	}
	return func() { unlockKey(ctx, conn, key) }, true, nil
}

// unlockKey releases the advisory lock key on conn. Should that fail, the connection is
// discarded: closing its session releases the lock.
func unlockKey(ctx context.Context, conn *sql.Conn, key int64) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(uctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
		sqlstore.Discard(conn)
	}
}
