package pgstore

import (
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// DefaultNames returns the replication slot and the publication through which the log
// reader of the outbox table reads it, in a database of that name. The publication belongs
// to the database; it is named after the table's schema and name joined by an underscore, in
// lower case ("outbox" for the default table, "app_outbox" for "app.outbox"), or "outbox_"
// and a hash when that is no valid name. Slots are server-wide: the slot's name adds the
// first 8 hex digits of the MD5 of the database's name ("outbox_098f6bcd" in database
// "test"), so that outboxes of one table name in two databases of one server do not share
// it. A slot named like the publication, as this module named slots before, is still used
// by an outbox of its own database ([Names]).
func DefaultNames(database, table string) (slot, publication string) {
	base := baseName(table)
	sum := md5.Sum([]byte(database))
	return base + "_" + hex.EncodeToString(sum[:4]), base
}

// Names returns the replication slot and the publication of the outbox table in the
// database that db (a *sql.DB, *sql.Conn or *sql.Tx) is connected to: those of
// [DefaultNames], or, when the database has a slot named like the publication (made before
// slot names named the database), that one.
func Names(ctx context.Context, db interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}, table string) (slot, publication string, err error) {
	legacy := baseName(table)
	var (
		database string
		old      bool
	)
	err = db.QueryRowContext(ctx, "SELECT current_database(), EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())", legacy).
		Scan(&database, &old)
	if err != nil {
		return "", "", fmt.Errorf("outbox: name the replication slot of %s: %w", table, err)
	}
	if old {
		return legacy, legacy, nil
	}
	slot, publication = DefaultNames(database, table)
	return slot, publication, nil
}

// slotNamesSQL is the condition, in SQL, that slot_name is the slot of the outbox table in the
// current database, for statements that cannot ask first.
func slotNamesSQL(table string) string {
	base := baseName(table) // lower-case letters, digits and underscores: safe as a literal
	return "slot_name IN ('" + base + "', '" + base + "_' || left(md5(current_database()), 8))"
}

// baseName is the table's schema and name as a valid slot name, with room for the suffix.
func baseName(table string) string {
	if table == "" {
		table = sqlstore.DefaultTable
	}
	base := strings.ReplaceAll(table, ".", "_")
	if !slotNameRE.MatchString(base) || len(base) > 54 {
		sum := uint64(14695981039346656037)
		for _, c := range []byte(table) {
			sum = (sum ^ uint64(c)) * 1099511628211
		}
		base = "outbox_" + strconv.FormatUint(sum, 16)
	}
	return base
}

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// setUpLog creates the publication and the replication slot after the schema steps of
// Migrate. The slot is created only here: creating one waits for every open write
// transaction on the server. Without wal_level = logical, or without the rights, it logs why
// and leaves the dispatchers polling.
func setUpLog(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) error {
	slot, pub, err := Names(ctx, conn, s.QualifiedName())
	if err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", pub).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		_, err := conn.ExecContext(ctx, "CREATE PUBLICATION "+pgx.Identifier{pub}.Sanitize()+" FOR TABLE "+s.Table()+" WITH (publish = 'insert')")
		if isPermission(err) {
			s.Logger().Warn("cannot create the publication for the log reader; dispatchers will poll", "publication", pub, "error", err)
			return nil
		}
		if err != nil {
			return fmt.Errorf("create publication %s: %w", pub, err)
		}
	}
	var (
		walLevel, currentDB string
		slotDB              sql.NullString // NULL without a slot
	)
	if err := conn.QueryRowContext(ctx, `SELECT current_setting('wal_level'), current_database(),
		(SELECT database FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&walLevel, &currentDB, &slotDB); err != nil {
		return err
	}
	if slotDB.Valid && slotDB.String != currentDB {
		s.Logger().Warn(slotElsewhere(slot, slotDB.String)+"; dispatchers will poll", "slot", slot)
	}
	if slotDB.Valid {
		return nil
	}
	if walLevel != "logical" {
		s.Logger().Info("wal_level is not logical: no replication slot created; dispatchers will poll (set wal_level = logical, restart Postgres and migrate again to read the log)",
			"wal_level", walLevel)
		return nil
	}
	_, err = conn.ExecContext(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	if isPermission(err) {
		s.Logger().Warn("cannot create the replication slot for the log reader (the user needs the REPLICATION attribute); dispatchers will poll", "slot", slot, "error", err)
		return nil
	}
	if sqlState(err) == codeDuplicateObject { // created meanwhile by another database's migrate
		return nil
	}
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return nil
}

// slotElsewhere says that the slot an outbox needs belongs to another database.
func slotElsewhere(slot, database string) string {
	return fmt.Sprintf("replication slot %s belongs to database %s: slot names are server-wide, so outboxes in two databases of one server need different table or schema names", slot, database)
}

// slotLoss is what check found of a slot that the reader can no longer read from.
type slotLoss int

const (
	slotFine    slotLoss = iota
	slotMissing          // dropped, or never created
	slotLost             // invalidated: it lost WAL it needed (max_slot_wal_keep_size)
)

func (l slotLoss) String() string {
	switch l {
	case slotMissing:
		return "dropped, or never created"
	case slotLost:
		return "invalidated"
	}
	return "none"
}

// check tells why the log cannot be read, as an error wrapping store.ErrLogUnavailable. A
// slot that is missing or invalidated is also noted in r.loss.
func (r *reader) check(ctx context.Context) error {
	r.loss = slotFine
	var (
		walLevel, currentDB       string
		pubExists                 bool
		slotDB, plugin, walStatus sql.NullString // slotDB is NULL without a slot
		relID                     sql.NullInt64
	)
	err := r.lockConn.QueryRowContext(ctx, `SELECT current_setting('wal_level'), current_database(),
		EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2),
		s.database, s.plugin, s.wal_status, to_regclass($3)::oid::bigint
		FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, r.slot, r.pub, r.s.Table()).
		Scan(&walLevel, &currentDB, &pubExists, &slotDB, &plugin, &walStatus, &relID)
	if err != nil {
		return err
	}
	unavailable := store.LogUnavailable
	switch {
	case walLevel != "logical":
		return unavailable("wal_level is %s; set wal_level = logical and restart Postgres, then run Migrate to create the replication slot", walLevel)
	case slotDB.Valid && slotDB.String != currentDB:
		return unavailable("%s", slotElsewhere(r.slot, slotDB.String))
	case !relID.Valid:
		return unavailable("table %s does not exist; run Migrate", r.s.Table())
	case !pubExists:
		return unavailable("publication %s does not exist; run Migrate", r.pub)
	case !slotDB.Valid:
		r.loss = slotMissing
		return unavailable("replication slot %s does not exist; run Migrate to create it", r.slot)
	case plugin.String != "pgoutput":
		return unavailable("replication slot %s uses the %s plugin, not pgoutput", r.slot, plugin.String)
	case walStatus.String == "lost":
		r.loss = slotLost
		return unavailable("replication slot %s lost WAL it needed (max_slot_wal_keep_size); drop it and run Migrate", r.slot)
	}
	r.relID = uint32(relID.Int64)
	return nil
}

// recover makes a new slot in place of one that is missing or invalidated, once the
// dispatchers poll: at the first try it only says so, with an error wrapping
// store.ErrLogUnavailable, and at the next it drops an invalidated slot and creates a new
// one. Creating a slot waits for the write transactions open at that moment to end (it holds
// none of them up), while the dispatchers poll. The new slot carries what commits from then
// on; what was written before is pending in the table, and the reader catches up with it
// through the sweep before it publishes later messages of its keys from the log
// ([sqlstore.Store.CatchUpTo]).
func (r *reader) recover(ctx context.Context) error {
	s := r.s
	if !s.LogLost() {
		return r.lostSlot()
	}
	if r.loss == slotLost {
		_, err := r.lockConn.ExecContext(ctx, "SELECT pg_drop_replication_slot($1)", r.slot)
		if err != nil && sqlState(err) != codeUndefinedObject {
			return fmt.Errorf("outbox: drop the invalidated replication slot %s: %w", r.slot, err)
		}
	}
	_, err := r.lockConn.ExecContext(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", r.slot)
	switch {
	case isPermission(err):
		return fmt.Errorf("%w: cannot create replication slot %s in place of the lost one (the user needs the REPLICATION attribute): %w", store.ErrLogUnavailable, r.slot, err)
	case sqlState(err) == codeConfigLimitExceeded:
		return fmt.Errorf("%w: cannot create replication slot %s in place of the lost one (max_replication_slots): %w", store.ErrLogUnavailable, r.slot, err)
	case sqlState(err) == codeDuplicateObject: // created meanwhile, by Migrate
	case err != nil:
		return fmt.Errorf("outbox: create replication slot %s: %w", r.slot, err)
	default:
		s.Logger().Info("created a new replication slot for the log reader in place of the lost one; the sweep delivers what was written meanwhile",
			"slot", r.slot, "lost", r.loss.String())
	}
	upTo, err := r.writtenUpTo(ctx)
	if err != nil {
		return err
	}
	if err := r.check(ctx); err != nil {
		return err
	}
	s.LogFound()
	s.CatchUpTo(upTo)
	return nil
}

// lostSlot says that the slot is lost and that the reader makes a new one at its next try.
func (r *reader) lostSlot() error {
	what := "was dropped, or never created: the log reader creates it"
	if r.loss == slotLost {
		what = "lost WAL it needed (max_slot_wal_keep_size): the log reader drops it and creates a new one"
	}
	return store.LogUnavailable("replication slot %s %s at its next try, and the sweep delivers what the new slot will not carry (pgstore Config.ManualLogRecovery leaves it to Migrate)",
		r.slot, what)
}

// writtenUpTo is at least the highest seq written so far: the identity sequence's last
// value, which counts transactions still open, where the user may read it, and the highest
// seq in the table. Read after a slot is created, it covers every message that committed
// before the slot's start.
func (r *reader) writtenUpTo(ctx context.Context) (int64, error) {
	table := r.s.Table()
	var upTo sql.NullInt64
	err := r.lockConn.QueryRowContext(ctx, `SELECT GREATEST((SELECT MAX(seq) FROM `+table+`),
		CASE WHEN has_sequence_privilege(pg_get_serial_sequence($1, 'seq'), 'SELECT')
		THEN pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')) END)`, table).Scan(&upTo)
	if err != nil {
		return 0, fmt.Errorf("outbox: read the last seq of %s: %w", table, err)
	}
	return upTo.Int64, nil
}
