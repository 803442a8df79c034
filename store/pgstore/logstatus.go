package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/outboxgo/outbox/store"
)

// LogState is where the change log of an outbox stands on the server, as [InspectLog] reads
// it from the catalog: the replication slot of its log reader (named as [Names] says), whether a
// reader is connected to it, and how far behind the WAL it is.
type LogState struct {
	// Slot and Publication are the names the log reader reads through ([Names]).
	Slot        string `json:"slot"`
	Publication string `json:"publication"`
	// WALLevel is the server's wal_level; the log can be read only when it is "logical".
	WALLevel string `json:"wal_level"`
	// SlotExists is true when the slot exists in this database.
	SlotExists bool `json:"slot_exists"`
	// Active is true when a reader is connected to the slot: a dispatcher reads the log.
	// Without one, dispatchers poll, or none runs.
	Active bool `json:"active"`
	// ActivePID is the server process serving the connected reader; 0 when none is.
	ActivePID int64 `json:"active_pid,omitempty"`
	// WALStatus is the slot's wal_status: "reserved" or "extended" while the server keeps the
	// WAL the slot needs, "unreserved" when that WAL is due for removal
	// (max_slot_wal_keep_size), "lost" once it was removed. Empty without a slot.
	WALStatus string `json:"wal_status,omitempty"`
	// LagBytes is how far the slot's confirmed position is behind the end of the WAL: what
	// the reader has yet to read and record. -1 without a slot.
	LagBytes int64 `json:"lag_bytes"`
	// RetainedBytes is how much WAL the slot keeps on the server's disk. -1 without a slot.
	RetainedBytes int64 `json:"retained_bytes"`
	// Problem says why the log cannot be read, and what to do about it, as the log reader would
	// report it; empty when a reader can read the log.
	Problem string `json:"problem,omitempty"`
}

// InspectLog reads the state of the change log of the outbox table in db (a handle from
// [Open]; table as in [Config], empty for the default). It reads the server's catalog
// (pg_replication_slots, pg_publication) and needs no privilege beyond connecting. It does not
// touch the slot: a dispatcher reading the log goes on undisturbed.
func InspectLog(ctx context.Context, db *sql.DB, table string) (*LogState, error) {
	s, err := newEngine(db, Config{Table: table})
	if err != nil {
		return nil, err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: inspect the log of %s: %w", s.QualifiedName(), err)
	}
	defer conn.Close()

	st := &LogState{LagBytes: -1, RetainedBytes: -1}
	if st.Slot, st.Publication, err = Names(ctx, conn, s.QualifiedName()); err != nil {
		return nil, err
	}
	var (
		currentDB          string
		slotDB, walStatus  sql.NullString
		active             sql.NullBool
		pid, lag, retained sql.NullInt64
	)
	err = conn.QueryRowContext(ctx, `SELECT current_setting('wal_level'), current_database(), s.database, s.active, s.active_pid, s.wal_status,
		pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
		pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint
		FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, st.Slot).
		Scan(&st.WALLevel, &currentDB, &slotDB, &active, &pid, &walStatus, &lag, &retained)
	if err != nil {
		return nil, fmt.Errorf("outbox: inspect the log of %s: %w", s.QualifiedName(), err)
	}
	// A slot of the same name may belong to another database (slot names are server-wide):
	// then it is no slot of this outbox, and the check below says so.
	if slotDB.Valid && slotDB.String == currentDB {
		st.SlotExists = true
		st.Active = active.Bool
		st.ActivePID = pid.Int64
		st.WALStatus = walStatus.String
		if lag.Valid {
			st.LagBytes = lag.Int64
		}
		if retained.Valid {
			st.RetainedBytes = retained.Int64
		}
	}
	// The reader's own check, so that the reason is the one the log reader gives.
	r := &reader{s: s, lockConn: conn, slot: st.Slot, pub: st.Publication}
	if err := r.check(ctx); errors.Is(err, store.ErrLogUnavailable) {
		st.Problem = store.LogUnavailableReason(err)
	} else if err != nil {
		return nil, fmt.Errorf("outbox: inspect the log of %s: %w", s.QualifiedName(), err)
	}
	return st, nil
}
