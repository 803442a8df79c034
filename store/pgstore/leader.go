package pgstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// waitForLead takes the outbox's log lock on conn, waiting as a standby while another
// instance holds it.
func waitForLead(ctx context.Context, s *sqlstore.Store, conn *sql.Conn, c store.LogConsumer) error {
	reported := false
	for {
		_, got, err := lock(ctx, conn, s, "log", 0)
		if err != nil {
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

// unlock releases the log lock taken by waitForLead.
func unlock(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) {
	unlockKey(ctx, conn, s.LockKey("log"))
}
