package sqlstore

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/store"
)

// Dialect is what differs between the SQL databases the store runs on. Get one from
// [SQLite], [Postgres] or [MySQL]; its fields are not exported because the store's queries
// depend on them together.
type Dialect struct {
	name      string
	quote     byte
	numbered  bool // $1, $2 instead of ?
	maxParams int
	// epoch is the SQL literal of the "never" time that unclaimed messages carry in
	// claimed_until; it must match the literal in the migrations' "held" column.
	epoch         string
	unixMicroTime bool // times stored as integer unix microseconds
	// now is the SQL expression of the database's clock, in the form the table stores times.
	// Every time the store writes or compares comes from it, so that no writer's or
	// dispatcher's clock can reorder messages or cut a lease short.
	now string
	// interval is the SQL expression of an interval of microseconds given as %s, which adds
	// to now.
	interval string
	claim    claimStyle
	notify   bool // Write sends pg_notify on the table's channel
	// asyncCommit, a table expression joined to an UPDATE (FROM) or a DELETE (USING), lets
	// the statement's own transaction commit without waiting for the WAL flush. Marking
	// messages delivered can: a mark lost in a server crash only publishes them again, which
	// at-least-once allows.
	asyncCommit string
	// shareLock, appended to a SELECT, makes it a locking read, which waits for the
	// transactions that wrote the rows to commit.
	shareLock      string
	migrationFiles fs.FS // the schema's steps in its schema/ directory, NNNN_name.sql templates of the table's names
	// classify maps a driver error to store.ErrNotMigrated or store.ErrPermission, or nil.
	classify func(error) error
}

// claimStyle is how a claim is made atomic among concurrent claimers.
type claimStyle int

const (
	// claimSingleStatement: one UPDATE ... RETURNING; the database runs one writer at a time
	// (SQLite).
	claimSingleStatement claimStyle = iota
	// claimAdvisoryLock: a transaction takes pg_advisory_xact_lock, then UPDATE ... RETURNING
	// with FOR UPDATE SKIP LOCKED (Postgres).
	claimAdvisoryLock
	// claimNamedLock: GET_LOCK on a pinned connection, then a plain SELECT and an UPDATE of
	// the rows it chose in a READ COMMITTED transaction (MySQL, MariaDB: no UPDATE ...
	// RETURNING).
	claimNamedLock
)

// SQLite is, with the schema of its database package, the dialect of SQLite 3.35 or later (for RETURNING).
func SQLite(schema fs.FS) Dialect {
	return Dialect{
		name:           "sqlite",
		quote:          '"',
		maxParams:      32766,
		epoch:          "0",
		unixMicroTime:  true,
		now:            "CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
		interval:       "%s",
		claim:          claimSingleStatement,
		migrationFiles: schema,
		classify: func(err error) error {
			var sqliteErr interface{ Code() int }
			if errors.As(err, &sqliteErr) {
				switch sqliteErr.Code() {
				case 2067, 1555: // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
					return store.ErrDuplicateID
				}
			}
			// A missing table or column is the generic SQLITE_ERROR: only its text tells.
			if msg := err.Error(); strings.Contains(msg, "no such table") || strings.Contains(msg, "no such column") {
				return store.ErrNotMigrated
			}
			return nil
		},
	}
}

// Postgres is, with the schema of its database package, the dialect of PostgreSQL 12 or later.
func Postgres(schema fs.FS) Dialect {
	return Dialect{
		name:      "postgres",
		quote:     '"',
		numbered:  true,
		maxParams: 65535,
		epoch:     "'1970-01-01 00:00:00+00'",
		// The start of the statement, not of its transaction (now()): a claim's transaction
		// may wait for its lock.
		now:            "statement_timestamp()",
		interval:       "(%s * interval '1 microsecond')",
		claim:          claimAdvisoryLock,
		notify:         true,
		asyncCommit:    "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit",
		migrationFiles: schema,
		classify: func(err error) error {
			var pgErr interface{ SQLState() string }
			if errors.As(err, &pgErr) {
				switch pgErr.SQLState() {
				case "42P01", "42703", "3F000": // undefined table, column, schema
					return store.ErrNotMigrated
				case "42501": // insufficient privilege
					return store.ErrPermission
				case "23505": // unique violation
					return store.ErrDuplicateID
				}
			}
			return nil
		},
	}
}

// MySQL is, with the schema of its database package, the dialect of MySQL 8.0 and MariaDB 10.6 or later.
func MySQL(schema fs.FS) Dialect {
	return Dialect{
		name:           "mysql",
		quote:          '`',
		maxParams:      65535,
		epoch:          "'1970-01-01 00:00:00'",
		now:            "UTC_TIMESTAMP(6)",
		interval:       "INTERVAL %s MICROSECOND",
		claim:          claimNamedLock,
		shareLock:      " LOCK IN SHARE MODE",
		migrationFiles: schema,
		classify: func(err error) error {
			var myErr *mysql.MySQLError
			if !errors.As(err, &myErr) {
				return nil
			}
			switch myErr.Number {
			case 1146, 1054, 1049: // no such table, column, database
				return store.ErrNotMigrated
			case 1142, 1143, 1044: // command, column, database denied
				return store.ErrPermission
			case 1062: // duplicate entry
				return store.ErrDuplicateID
			}
			return nil
		},
	}
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// table is a validated, possibly schema-qualified table name.
type table struct {
	schema, name string
	d            Dialect
}

func parseTable(d Dialect, s string) (table, error) {
	parts := strings.Split(s, ".")
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return table{}, fmt.Errorf("%w: %q (want letters, digits and underscores, at most 63, optionally schema.table)", store.ErrInvalidTable, s)
		}
	}
	switch len(parts) {
	case 1:
		return table{name: parts[0], d: d}, nil
	case 2:
		return table{schema: parts[0], name: parts[1], d: d}, nil
	}
	return table{}, fmt.Errorf("%w: %q has more than one dot", store.ErrInvalidTable, s)
}

func (d Dialect) quoteIdent(s string) string {
	q := string(d.quote)
	return q + s + q
}

// String is the quoted, qualified table name for queries.
func (t table) String() string {
	if t.schema != "" {
		return t.d.quoteIdent(t.schema) + "." + t.d.quoteIdent(t.name)
	}
	return t.d.quoteIdent(t.name)
}

// Index is the quoted name of one of the table's indexes. Index names are not schema-qualified.
func (t table) Index(suffix string) string { return t.d.quoteIdent(t.name + "_" + suffix) }

// Related is the quoted name of a table that belongs to the outbox table, in its schema.
func (t table) Related(suffix string) string {
	r := table{schema: t.schema, name: t.name + "_" + suffix, d: t.d}
	return r.String()
}

// Table is the quoted table name, for migration templates.
func (t table) Table() string { return t.String() }

// timeArg is how a time goes into a query.
func (d Dialect) timeArg(t time.Time) any {
	if d.unixMicroTime {
		return t.UnixMicro()
	}
	return t.UTC().Truncate(time.Microsecond)
}

// nowPlus is the SQL expression of the database's clock plus d, d's microseconds bound as an
// argument of b.
func (b *builder) nowPlus(d time.Duration) string {
	if d == 0 {
		return b.d.now
	}
	return "(" + b.d.now + " + " + fmt.Sprintf(b.d.interval, b.arg(d.Microseconds())) + ")"
}

// lockKey is a stable 63-bit number for a lock that belongs to the table, for Postgres
// advisory locks and (in hex) MySQL named locks, whose names are limited to 64 characters.
func (t table) lockKey(purpose string) int64 {
	h := fnv.New64a()
	h.Write([]byte("outbox:" + purpose + ":" + t.schema + "." + t.name))
	return int64(h.Sum64() >> 1)
}

// channel is the Postgres notification channel of the table.
func (t table) channel() string {
	if c := "outbox_" + t.name; t.schema == "" && len(c) <= 63 {
		return c
	}
	return fmt.Sprintf("outbox_%x", t.lockKey("notify"))
}

// builder accumulates a query's arguments and hands out their placeholders.
type builder struct {
	d    Dialect
	args []any
}

func (b *builder) arg(v any) string {
	b.args = append(b.args, v)
	if b.d.numbered {
		return "$" + strconv.Itoa(len(b.args))
	}
	return "?"
}

// in is the condition that column is one of vs. Postgres gets one array parameter, so that
// every list size shares one prepared statement whose generic plan still uses the index; an
// IN list of parameters there drifts to a plan that scans every pending row.
func (b *builder) in(column string, vs []string) string {
	if b.d.numbered {
		return column + " = ANY(" + b.arg(vs) + ")"
	}
	var sb strings.Builder
	sb.WriteString(column + " IN (")
	for i, v := range vs {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(b.arg(v))
	}
	sb.WriteByte(')')
	return sb.String()
}

// inSeqs is the condition that column, a BIGINT, is one of vs: an array parameter on
// Postgres, a literal list elsewhere (integers need no quoting).
func (b *builder) inSeqs(column string, vs []int64) string {
	if b.d.numbered {
		return column + " = ANY(" + b.arg(vs) + ")"
	}
	var sb strings.Builder
	sb.WriteString(column + " IN (")
	for i, v := range vs {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatInt(v, 10))
	}
	sb.WriteByte(')')
	return sb.String()
}

// Migration is one step of the outbox schema.
type Migration = store.Migration

func (d Dialect) migrations(t table) ([]Migration, error) {
	entries, err := fs.ReadDir(d.migrationFiles, "schema")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("outbox: migration file %q is not named NNNN_name.sql", e.Name())
		}
		raw, err := fs.ReadFile(d.migrationFiles, "schema/"+e.Name())
		if err != nil {
			return nil, err
		}
		tmpl, err := template.New(e.Name()).Parse(string(raw))
		if err != nil {
			return nil, err
		}
		var sb strings.Builder
		if err := tmpl.Execute(&sb, t); err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, Name: name, SQL: sb.String()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}
