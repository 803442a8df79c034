package pgstore

import (
	"context"
	"database/sql"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// waitForLead takes the outbox's log lock on conn, waiting as a standby while another
// instance holds it.
func waitForLead(ctx context.Context, s *sqlstore.Store, conn *sql.Conn, o store.LogOptions) error {
	return sqlstore.WaitForLead(ctx, func(ctx context.Context) (bool, error) {
		_, got, err := lock(ctx, conn, s, "log", 0)
		return got, err
	}, func() {
		if o.Status != nil {
			o.Status(store.LogStatus{})
		}
	})
}

// unlock releases the log lock taken by waitForLead.
func unlock(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) {
	unlockKey(ctx, conn, s.LockKey("log"))
}
