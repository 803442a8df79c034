package mysqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// lock takes the table's named lock for purpose on conn: waiting at most wait (in whole
// seconds), or with wait 0 only if it is free.
func lock(ctx context.Context, conn *sql.Conn, s *sqlstore.Store, purpose string, wait time.Duration) (func(), bool, error) {
	expr, name := tableLock(s, purpose)
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK("+expr+", ?)", name, int(wait.Seconds())).Scan(&got); err != nil || got.Int64 != 1 {
		return nil, false, err
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, "DO RELEASE_LOCK("+expr+")", name); err != nil {
			sqlstore.Discard(conn) // closing the session releases the lock
		}
	}, true, nil
}

// tableLock is the named lock of the table for purpose: an SQL expression and its one
// argument. Named locks are server-wide: for a table named without its database, the
// database's name goes into the lock's (hashed, as names are limited to 64 characters), so
// that the outboxes of different databases do not share locks.
func tableLock(s *sqlstore.Store, purpose string) (expr, arg string) {
	name := fmt.Sprintf("outbox_%s_%x", purpose, s.LockKey(purpose))
	if s.Schema() != "" {
		return "?", name
	}
	return "CONCAT(?, '_', LEFT(SHA1(IFNULL(DATABASE(), '')), 12))", name
}
