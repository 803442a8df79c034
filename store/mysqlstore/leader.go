package mysqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

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
	return sqlstore.WaitForLead(ctx, func(ctx context.Context) (bool, error) {
		var got sql.NullInt64
		err := r.lockConn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", r.lockName).Scan(&got)
		return got.Int64 == 1, err
	}, func() { r.status(store.LogStatus{LagBytes: -1}) })
}

func (r *reader) unlock(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.lockConn.ExecContext(uctx, "DO RELEASE_LOCK(?)", r.lockName); err != nil {
		sqlstore.Discard(r.lockConn) // closing the session releases the lock
	}
}
