package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// position is a place in the binlog: where a transaction ends.
type position struct {
	gtids map[uint32]gtid // MariaDB: the last GTID in each domain
	file  string
	pos   uint32
}

func (p position) clone() position {
	p.gtids = maps.Clone(p.gtids)
	return p
}

// binlogIndex is the number that ends a binlog file name, or -1.
func binlogIndex(name string) int64 {
	i := strings.LastIndexByte(name, '.')
	n, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// compareFiles orders binlog file names by their number.
func compareFiles(a, b string) int {
	ia, ib := binlogIndex(a), binlogIndex(b)
	if ia < 0 || ib < 0 {
		return strings.Compare(a, b)
	}
	switch {
	case ia < ib:
		return -1
	case ia > ib:
		return 1
	}
	return 0
}

// positionTable is the quoted name of the reader's position table. Names are validated
// identifiers (letters, digits, underscores).
func positionTable(schema, table string) string {
	name := "`" + table + "_log_position`"
	if schema != "" {
		name = "`" + schema + "`." + name
	}
	return name
}

// currentPosition is the end of the server's binlog now.
func currentPosition(ctx context.Context, q querier, mariadb bool) (position, error) {
	var p position
	if mariadb {
		var g string
		if err := q.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&g); err != nil {
			return p, err
		}
		var err error
		if p.gtids, err = parseGTIDs(g); err != nil {
			return p, err
		}
		// The file and offset only serve the lag until the stream tells them.
		p.file, p.pos, _ = masterStatus(ctx, q)
		return p, nil
	}
	var err error
	p.file, p.pos, err = masterStatus(ctx, q)
	return p, err
}

// loadPosition reads the stored position.
func loadPosition(ctx context.Context, q querier, table string) (p position, ok bool, err error) {
	var g string
	var pos int64
	err = q.QueryRowContext(ctx, "SELECT gtid_set, file, pos FROM "+table+" WHERE id = 1").Scan(&g, &p.file, &pos)
	if errors.Is(err, sql.ErrNoRows) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	if pos < 0 || pos > int64(^uint32(0)) {
		return p, false, fmt.Errorf("stored binlog offset %d is out of range", pos)
	}
	p.pos = uint32(pos)
	if p.gtids, err = parseGTIDs(g); err != nil {
		return p, false, fmt.Errorf("stored GTID position: %w", err)
	}
	return p, true, nil
}

func insertPosition(ctx context.Context, q querier, table string, p position, now time.Time) error {
	_, err := q.ExecContext(ctx, "INSERT IGNORE INTO "+table+" (id, gtid_set, file, pos, updated_at) VALUES (1, ?, ?, ?, ?)",
		formatGTIDs(p.gtids), p.file, int64(p.pos), now.UTC())
	return err
}

// recordStart is the store's Migrate hook: it records the server's current binlog position
// as the reader's start, when none is recorded and the server writes a binlog. Messages
// written before it are the sweep's.
func recordStart(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) error {
	table := positionTable(s.Schema(), s.TableName())
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	if n > 0 {
		return nil
	}
	var (
		version string
		logBin  sql.NullInt64
	)
	if err := conn.QueryRowContext(ctx, "SELECT VERSION(), @@GLOBAL.log_bin").Scan(&version, &logBin); err != nil {
		return err
	}
	if logBin.Int64 != 1 {
		s.Logger().Info("the server writes no binlog (log_bin is off): dispatchers will poll")
		return nil
	}
	p, err := currentPosition(ctx, conn, isMariaDB(version))
	if err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			s.Logger().Warn("cannot read the binlog position; the log reader records it when it first runs", slog.String("hint", privilegesNeeded), slog.Any("error", err))
			return nil
		}
		return fmt.Errorf("read the binlog position: %w", err)
	}
	if err := insertPosition(ctx, conn, table, p, s.Now()); err != nil {
		return fmt.Errorf("record the binlog position in %s: %w", table, err)
	}
	return nil
}

// startPosition is the stored position, or the current one, stored now, when there is none.
func (r *reader) startPosition(ctx context.Context) (position, error) {
	p, ok, err := loadPosition(ctx, r.lockConn, r.posTable)
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: read %s: %w", r.posTable, err)
	}
	if ok && (len(p.gtids) > 0 || p.file != "") {
		return p, nil
	}
	cur, err := currentPosition(ctx, r.lockConn, r.mariadb)
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: read the binlog position: %w", err)
	}
	if ok {
		err = r.savePosition(ctx, r.lockConn, cur)
	} else {
		err = insertPosition(ctx, r.lockConn, r.posTable, cur, r.s.Now())
	}
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: record the binlog position in %s: %w", r.posTable, err)
	}
	if p, ok, err = loadPosition(ctx, r.lockConn, r.posTable); err != nil || !ok {
		return p, fmt.Errorf("outbox: log reader: read %s: %v", r.posTable, err)
	}
	// Messages written before this position are not in the binlog the reader reads: those
	// still pending go out through the sweep first, in write order.
	upTo, err := r.writtenUpTo(ctx)
	if err != nil {
		return p, err
	}
	r.s.CatchUpTo(upTo)
	r.log.Info("the log reader starts from the server's current binlog position; the sweep delivers the messages written before it",
		slog.String("gtid_set", formatGTIDs(p.gtids)), slog.String("file", p.file), slog.Uint64("pos", uint64(p.pos)))
	return p, nil
}

// writtenUpTo is at least the highest seq written so far: the table's next AUTO_INCREMENT
// value less one, which counts transactions still open (and which MySQL 8 may read from its
// statistics cache, as information_schema_stats_expiry allows), and the highest seq in the
// table. Read after the server's current position, it covers every message written before
// that position, whether or not its transaction is visible yet (the binlog has a
// transaction a moment before the storage engine commits it).
func (r *reader) writtenUpTo(ctx context.Context) (int64, error) {
	var upTo sql.NullInt64
	err := r.lockConn.QueryRowContext(ctx, "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM "+r.s.Table()+"), 0),"+
		" COALESCE((SELECT AUTO_INCREMENT - 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?), 0))",
		r.schema, r.s.TableName()).Scan(&upTo)
	if err != nil {
		return 0, fmt.Errorf("outbox: log reader: read the last seq of %s: %w", r.s.Table(), err)
	}
	return upTo.Int64, nil
}

func (r *reader) savePosition(ctx context.Context, q querier, p position) error {
	_, err := q.ExecContext(ctx, "INSERT INTO "+r.posTable+" (id, gtid_set, file, pos, updated_at) VALUES (1, ?, ?, ?, ?)"+
		" ON DUPLICATE KEY UPDATE gtid_set = VALUES(gtid_set), file = VALUES(file), pos = VALUES(pos), updated_at = VALUES(updated_at)",
		formatGTIDs(p.gtids), p.file, int64(p.pos), r.s.Now().UTC())
	return err
}

// lostPosition is the error for a position the binlog no longer holds.
func (r *reader) lostPosition(p position, err error) error {
	at := p.file + ":" + strconv.FormatUint(uint64(p.pos), 10)
	if r.mariadb && len(p.gtids) > 0 {
		at = "GTID " + formatGTIDs(p.gtids)
	}
	return &lostPositionError{at: at, err: err, manual: store.LogUnavailable("the binlog no longer holds the reader's position %s (purged, or the log was reset): %v; "+
		"delete the row of %s to restart from the current position (the sweep delivers what was written meanwhile)", at, err, r.posTable)}
}

// lostPositionError is a position the binlog no longer holds. It wraps
// store.ErrLogUnavailable, and says what an operator does about it.
type lostPositionError struct {
	at     string
	err    error // the server's
	manual error
}

func (e *lostPositionError) Error() string { return e.manual.Error() }
func (e *lostPositionError) Unwrap() error { return e.manual }

// forgetPosition deletes the stored position that the binlog no longer holds, so that the
// reader's next try starts from the server's current position, as an operator deleting the
// row would have it, and says so. Every message the lost position was to carry is pending in
// the table, and the sweep delivers it. Called while the reader holds the log lock, after
// its last batch is recorded (which stores the position too).
func (r *reader) forgetPosition(ctx context.Context, lost *lostPositionError) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := r.lockConn.ExecContext(dctx, "DELETE FROM "+r.posTable+" WHERE id = 1"); err != nil {
		return fmt.Errorf("%w (and deleting it to start again from the current position failed: %v)", lost, err)
	}
	return restartMessage(lost)
}

// restartMessage says that the reader starts again from the server's current position.
func restartMessage(lost *lostPositionError) error {
	return store.LogUnavailable("the binlog no longer holds the reader's position %s (purged, or the log was reset): %v; "+
		"the reader starts again from the server's current position at its next try, and the sweep delivers what was written meanwhile "+
		"(mysqlstore Config.ManualLogRecovery leaves it to an operator)", lost.at, lost.err)
}
