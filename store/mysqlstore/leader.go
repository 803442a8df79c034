package mysqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
)

// standbyRetry is how often a standby tries to take the reader's lock.
const standbyRetry = time.Second

// lockName is the name of the outbox's log lock. It is made from the resolved database and
// table, not the configured name: unqualified tables in different databases are different
// outboxes, and "app.outbox" and "outbox" in database app are the same one. fold is set when
// the server compares table names without case.
func lockName(schema, table string, fold bool) string {
	id := schema + "." + table
	if fold {
		id = strings.ToLower(id)
	}
	h := fnv.New64a()
	h.Write([]byte("outbox:log:" + id))
	return fmt.Sprintf("outbox_log_%x", h.Sum64()>>1)
}

// waitForLead takes the outbox's log lock, waiting as a standby while another instance
// holds it.
func (r *reader) waitForLead(ctx context.Context) error {
	reported := false
	for {
		var got sql.NullInt64
		if err := r.lockConn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", r.lockName).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // the driver may report a query it cancelled as a bad connection
			}
			return fmt.Errorf("outbox: take the log reader lock: %w", err)
		}
		if got.Int64 == 1 {
			return nil
		}
		if !reported {
			r.status(store.LogStatus{LagBytes: -1})
			reported = true
		}
		timer := time.NewTimer(standbyRetry)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}

func (r *reader) unlock(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.lockConn.ExecContext(uctx, "DO RELEASE_LOCK(?)", r.lockName); err != nil {
		// Closing the session releases the lock.
		r.lockConn.Raw(func(any) error { return driver.ErrBadConn })
	}
}
