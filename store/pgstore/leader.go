package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/outboxgo/outbox/internal/sqlstore"
	"github.com/outboxgo/outbox/store"
)

// errBadConn makes database/sql discard a connection rather than return it to the pool.
var errBadConn = errors.New("outbox: discard connection")

// waitForLead takes the outbox's log lock on conn, waiting as a standby while another
// instance holds it.
func waitForLead(ctx context.Context, s *sqlstore.Store, conn *sql.Conn, c store.LogConsumer) error {
	reported := false
	for {
		var got bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", s.LockKey("log")).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // the driver reports a query it cancelled as a bad connection
			}
			return fmt.Errorf("outbox: take the log reader's lock: %w", err)
		}
		if got {
			return nil
		}
		if !reported && c.Status != nil {
			c.Status(store.LogStatus{})
			reported = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// unlock releases the log lock taken by waitForLead. Should that fail, the connection is
// discarded: closing its session releases the lock.
func unlock(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(uctx, "SELECT pg_advisory_unlock($1)", s.LockKey("log")); err != nil {
		conn.Raw(func(any) error { return errBadConn })
	}
}
