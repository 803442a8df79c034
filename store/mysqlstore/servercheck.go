package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/outboxgo/outbox/store"
)

const privilegesNeeded = "the user needs the REPLICATION SLAVE and REPLICATION CLIENT privileges (on MariaDB: REPLICATION SLAVE and BINLOG MONITOR), e.g. GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <user>"

// check tells why the binlog cannot be read, as an error wrapping store.ErrLogUnavailable.
func (r *reader) check(ctx context.Context) error {
	var (
		logBin, serverID sql.NullInt64
		format, rowImag  sql.NullString
	)
	err := r.lockConn.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, @@GLOBAL.server_id").
		Scan(&logBin, &format, &rowImag, &serverID)
	if err != nil {
		return fmt.Errorf("outbox: log reader: read server settings: %w", err)
	}
	switch {
	case logBin.Int64 != 1:
		return store.LogUnavailable("the server writes no binlog: start it with log_bin, binlog_format=ROW and binlog_row_image=FULL")
	case serverID.Int64 == 0:
		return store.LogUnavailable("server_id is 0: the server serves replicas only with a server_id")
	case !strings.EqualFold(format.String, "ROW"):
		return store.LogUnavailable("binlog_format is %s; the reader needs ROW", format.String)
	case !strings.EqualFold(rowImag.String, "FULL"):
		return store.LogUnavailable("binlog_row_image is %s; the reader needs FULL", rowImag.String)
	}
	for _, t := range []string{r.s.Table(), r.posTable} {
		_, err := r.lockConn.ExecContext(ctx, "SELECT 1 FROM "+t+" WHERE 1 = 0")
		switch sqlErrNumber(err) {
		case 0:
			if err != nil {
				return fmt.Errorf("outbox: log reader: %w", err)
			}
		case errNoSuchTable:
			return store.LogUnavailable("table %s does not exist: run Migrate, or the migration files", t)
		case errTableDenied, errDBDenied:
			return store.LogUnavailable("cannot read table %s: %v", t, err)
		default:
			return fmt.Errorf("outbox: log reader: %w", err)
		}
	}
	if _, _, err := masterStatus(ctx, r.lockConn); err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			return store.LogUnavailable("%s: %v", privilegesNeeded, err)
		}
		return fmt.Errorf("outbox: log reader: %w", err)
	}
	return nil
}

// masterStatus returns the end of the server's binlog. It needs REPLICATION CLIENT
// (BINLOG MONITOR).
func masterStatus(ctx context.Context, q querier) (file string, pos uint32, err error) {
	rows, err := q.QueryContext(ctx, "SHOW MASTER STATUS")
	if sqlErrNumber(err) == errSyntax { // MySQL 8.4 renamed it
		rows, err = q.QueryContext(ctx, "SHOW BINARY LOG STATUS")
	}
	if err != nil {
		return "", 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", 0, err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return "", 0, err
		}
		return "", 0, errors.New("the server reports no binlog position (log_bin is off)")
	}
	vals, err := scanStrings(rows, len(cols))
	if err != nil {
		return "", 0, err
	}
	for i, c := range cols {
		switch strings.ToLower(c) {
		case "file":
			file = vals[i].String
		case "position":
			p, err := strconv.ParseUint(vals[i].String, 10, 32)
			if err != nil {
				return "", 0, fmt.Errorf("binlog position %q: %w", vals[i].String, err)
			}
			pos = uint32(p)
		}
	}
	return file, pos, rows.Err()
}

// scanStrings scans the current row's n columns, whatever their names: SHOW statements differ
// between servers and versions in the columns they return.
func scanStrings(rows *sql.Rows, n int) ([]sql.NullString, error) {
	vals := make([]sql.NullString, n)
	ptrs := make([]any, n)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	return vals, rows.Scan(ptrs...)
}

func isMariaDB(version string) bool { return strings.Contains(version, "MariaDB") }
