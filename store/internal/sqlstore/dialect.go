package sqlstore

import (
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/outboxgo/outbox/store"
)

// Dialect is what differs between the SQL databases the store runs on: each database
// package describes its own.
type Dialect struct {
	// Name is the database's name in messages and [store.Capabilities].
	Name string
	// Quote quotes identifiers.
	Quote byte
	// Numbered placeholders ($1, $2) instead of ?; they take arrays of values too.
	Numbered bool
	// MaxParams is the most parameters a statement may bind.
	MaxParams int
	// Epoch is the SQL literal of the "never" time that unclaimed messages carry in
	// claimed_until; it must match the literal in the schema's "held" column.
	Epoch string
	// NoToken is the SQL literal of claim_token in a row that no claim holds; NULL when
	// empty.
	NoToken string
	// Waiting is the condition of a pending message with a retry time (next_attempt_at past
	// the epoch: failed, handed over by a log reader, claimed by a sweep), in the form its
	// index takes; state = 'pending' AND next_attempt_at > Epoch when empty (a partial index).
	Waiting string
	// UnixMicroTime: times are stored as integer unix microseconds.
	UnixMicroTime bool
	// Now is the SQL expression of the database's clock, in the form the table stores times.
	// Every time the store writes or compares comes from it, so that no writer's or
	// dispatcher's clock can reorder messages or cut a lease short.
	Now string
	// Interval is the SQL expression of an interval of microseconds given as %s, which adds
	// to Now.
	Interval string
	// Claims is how a claim is made atomic among concurrent claimers.
	Claims ClaimStyle
	// ClaimTurn is, with ClaimsInTurnsInATransaction, the statement that waits for the
	// claims' turn in the claim's transaction, with the lock key as its one argument.
	ClaimTurn string
	// NotifyWrite, when set, wraps a Write's INSERT (channel is its bound argument) so that
	// it wakes the dispatchers of other processes, and returns the number of rows written,
	// the lowest seq written and the notification's result; conflicting ids are skipped.
	NotifyWrite func(insert, channel string) string
	// AsyncCommit, a table expression joined to an UPDATE (FROM) or a DELETE (USING), lets
	// the statement's own transaction commit without waiting for the WAL flush. Marking
	// messages delivered can: a mark lost in a server crash only publishes them again, which
	// at-least-once allows.
	AsyncCommit string
	// ShareLock, appended to a SELECT, makes it a locking read, which waits for the
	// transactions that wrote the rows to commit.
	ShareLock string
	// DeleteUpTo is a statement that deletes at most %[3]s rows of table %[1]s where %[2]s.
	DeleteUpTo string
	// Schema holds the schema's steps in its schema/ directory: NNNN_name.sql templates of
	// the table's names.
	Schema fs.FS
	// Classify maps a driver error to store.ErrNotMigrated, store.ErrPermission or
	// store.ErrDuplicateID, or nil.
	Classify func(error) error
}

// noToken is the SQL literal of claim_token in a row that no claim holds.
func (d Dialect) noToken() string {
	if d.NoToken == "" {
		return "NULL"
	}
	return d.NoToken
}

// waiting is the condition of a pending message with a retry time; see Dialect.Waiting.
func (d Dialect) waiting() string {
	if d.Waiting == "" {
		return "state = 'pending' AND next_attempt_at > " + d.Epoch
	}
	return d.Waiting
}

// ClaimStyle is how a claim is made atomic among concurrent claimers.
type ClaimStyle int

const (
	// ClaimsOneWriter: one UPDATE ... RETURNING; the database runs one writer at a time
	// (SQLite).
	ClaimsOneWriter ClaimStyle = iota
	// ClaimsInTurnsInATransaction: a transaction waits for its turn (Dialect.ClaimTurn),
	// reads the window, then UPDATE ... RETURNING of the messages picked (Postgres).
	ClaimsInTurnsInATransaction
	// ClaimsInTurnsOnASession: [Hooks].Lock on a pinned connection, then a plain SELECT, an
	// UPDATE of the rows it chose and a SELECT of them, each committing on its own (MySQL,
	// MariaDB: no UPDATE ... RETURNING).
	ClaimsInTurnsOnASession
)

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
	q := string(d.Quote)
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
	if d.UnixMicroTime {
		return t.UnixMicro()
	}
	return t.UTC().Truncate(time.Microsecond)
}

// nowPlus is the SQL expression of the database's clock plus d, d's microseconds bound as an
// argument of b.
func (b *builder) nowPlus(d time.Duration) string {
	if d == 0 {
		return b.d.Now
	}
	return "(" + b.d.Now + " + " + fmt.Sprintf(b.d.Interval, b.arg(d.Microseconds())) + ")"
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
	if b.d.Numbered {
		return "$" + strconv.Itoa(len(b.args))
	}
	return "?"
}

// in is the condition that column is one of vs. Postgres gets one array parameter, so that
// every list size shares one prepared statement whose generic plan still uses the index; an
// IN list of parameters there drifts to a plan that scans every pending row.
func (b *builder) in(column string, vs []string) string {
	return b.oneOf(column, vs, len(vs), func(i int) string { return b.arg(vs[i]) })
}

// inSeqs is the condition that column, a BIGINT, is one of vs: an array parameter on
// Postgres, a literal list elsewhere (integers need no quoting).
func (b *builder) inSeqs(column string, vs []int64) string {
	return b.oneOf(column, vs, len(vs), func(i int) string { return strconv.FormatInt(vs[i], 10) })
}

// oneOf is the condition that column is one of n values: array, one parameter, where
// placeholders are numbered (Postgres), or an IN list of item(0) to item(n-1).
func (b *builder) oneOf(column string, array any, n int, item func(int) string) string {
	if b.d.Numbered {
		return column + " = ANY(" + b.arg(array) + ")"
	}
	var sb strings.Builder
	sb.WriteString(column + " IN (")
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(item(i))
	}
	sb.WriteByte(')')
	return sb.String()
}

// Migration is one step of the outbox schema.
type Migration = store.Migration

func (d Dialect) migrations(t table) ([]Migration, error) {
	entries, err := fs.ReadDir(d.Schema, "schema")
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
		raw, err := fs.ReadFile(d.Schema, "schema/"+e.Name())
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
