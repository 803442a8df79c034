package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/outboxgo/outbox/store"
)

// LogState is where the binlog reader of an outbox stands, as [InspectLog] reads it from the
// server: whether the server writes a binlog the reader can read, whether a reader holds the
// outbox's log lock, and the position it stored.
type LogState struct {
	// BinlogOn is the server's log_bin, and BinlogFormat its binlog_format (the reader needs
	// ROW).
	BinlogOn     bool   `json:"binlog_on"`
	BinlogFormat string `json:"binlog_format,omitempty"`
	// LockName is the named lock (GET_LOCK) that the outbox's one reader holds while it reads.
	LockName string `json:"lock_name"`
	// ReaderConnection is the connection id of the session that holds the lock: the reader's.
	// 0 when none holds it: dispatchers poll, or none runs.
	ReaderConnection int64 `json:"reader_connection,omitempty"`
	// PositionTable is the table where the reader stores its position.
	PositionTable string `json:"position_table"`
	// Position is the stored position, nil when none is stored (Migrate stores one when the
	// server writes a binlog, and the reader when it starts).
	Position *LogPosition `json:"position,omitempty"`
	// LagBytes is how far the stored position is behind the end of the binlog, or -1 when not
	// known (no position, or the user may not read the binlog's size: REPLICATION CLIENT,
	// BINLOG MONITOR on MariaDB). A reader stores its position with each batch it records, and
	// otherwise at most once a second, so a reader that keeps up shows a few hundred bytes.
	LagBytes int64 `json:"lag_bytes"`
	// Problem says why the binlog cannot be read, and what to do about it, as the log reader would
	// report it; empty when a reader can read the binlog.
	Problem string `json:"problem,omitempty"`
}

// LogPosition is the position a binlog reader stored: where it resumes.
type LogPosition struct {
	// GTIDSet is, on MariaDB, the last GTID read in each domain; the reader resumes from it.
	GTIDSet string `json:"gtid_set,omitempty"`
	// File and Pos are the binlog file and offset after the last transaction read.
	File string `json:"file"`
	Pos  int64  `json:"pos"`
	// UpdatedAt is when the reader stored it, by its own clock. It does not move while
	// nothing is written on the server, so an old time alone is no sign of trouble.
	UpdatedAt time.Time `json:"updated_at"`
}

// InspectLog reads the state of the binlog reader of the outbox table in db (a MySQL or
// MariaDB handle; table as in [Config], empty for the default). It needs the rights on the
// outbox's tables, and, for the lag and for Problem to be empty, the reader's privileges. It
// does not take the reader's lock: a dispatcher reading the binlog goes on undisturbed.
func InspectLog(ctx context.Context, db *sql.DB, table string) (*LogState, error) {
	s, err := newEngine(db, Config{Table: table})
	if err != nil {
		return nil, err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: inspect the binlog reader of %s: %w", s.QualifiedName(), err)
	}
	defer conn.Close()

	// The reader's own steps find the lock name, the position table and the reason the
	// binlog cannot be read, so that they stay the reader's.
	r := &reader{s: s, lockConn: conn}
	if err := r.identify(ctx); errors.Is(err, store.ErrLogUnavailable) {
		return &LogState{LagBytes: -1, Problem: store.LogUnavailableReason(err)}, nil
	} else if err != nil {
		return nil, err
	}
	st := &LogState{LockName: r.lockName, PositionTable: r.schema + "." + s.TableName() + "_log_position", LagBytes: -1}
	var (
		logBin, holder sql.NullInt64
		format         sql.NullString
	)
	if err := conn.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, IS_USED_LOCK(?)", r.lockName).
		Scan(&logBin, &format, &holder); err != nil {
		return nil, fmt.Errorf("outbox: inspect the binlog reader of %s: %w", s.QualifiedName(), err)
	}
	st.BinlogOn, st.BinlogFormat, st.ReaderConnection = logBin.Int64 == 1, format.String, holder.Int64

	var (
		p       LogPosition
		updated string
	)
	err = conn.QueryRowContext(ctx, "SELECT gtid_set, file, pos, CAST(updated_at AS CHAR) FROM "+r.posTable+" WHERE id = 1").
		Scan(&p.GTIDSet, &p.File, &p.Pos, &updated)
	switch {
	case err == nil:
		if p.UpdatedAt, err = time.ParseInLocation("2006-01-02 15:04:05.999999", updated, time.UTC); err != nil {
			return nil, fmt.Errorf("outbox: inspect the binlog reader of %s: updated_at %q: %w", s.QualifiedName(), updated, err)
		}
		st.Position = &p
	case errors.Is(err, sql.ErrNoRows), sqlErrNumber(err) == errNoSuchTable: // the check below says so
	default:
		return nil, fmt.Errorf("outbox: inspect the binlog reader of %s: read %s: %w", s.QualifiedName(), r.posTable, err)
	}
	if st.Position != nil && st.BinlogOn && p.Pos >= 0 && p.Pos <= int64(^uint32(0)) {
		if file, pos, err := masterStatus(ctx, conn); err == nil {
			r.read = position{file: p.File, pos: uint32(p.Pos)}
			st.LagBytes = r.lagBytes(ctx, file, pos)
		}
	}
	if err := r.check(ctx); errors.Is(err, store.ErrLogUnavailable) {
		st.Problem = store.LogUnavailableReason(err)
	} else if err != nil {
		return nil, err
	}
	return st, nil
}
