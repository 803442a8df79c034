package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/uptrace/bun"

	"github.com/outboxgo/outbox/store"
)

// unwrap returns the database/sql handle under a bun handle, so that Write binds its
// arguments natively instead of having bun inline them.
func unwrap(db store.Execer) store.Execer {
	switch v := db.(type) {
	case bun.Tx:
		if v.Tx != nil {
			return v.Tx
		}
	case *bun.Tx:
		if v != nil && v.Tx != nil {
			return v.Tx
		}
	case *bun.DB:
		if v != nil {
			return v.DB
		}
	case bun.Conn:
		if v.Conn != nil {
			return v.Conn
		}
	}
	return db
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch v := v.(type) {
	case bun.Tx:
		return v.Tx == nil
	case bun.Conn:
		return v.Conn == nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Func, reflect.Chan, reflect.Slice:
		return rv.IsNil()
	}
	return false
}

const writeColumns = 5

// Write implements [store.Engine]. When ctx carries a span, each message also stores its trace
// context (the traceparent and tracestate headers), unless it has a traceparent of its own.
func (s *Store) Write(ctx context.Context, db store.Execer, msgs ...store.Message) error {
	if isNil(db) {
		return store.ErrNilTx
	}
	if len(msgs) == 0 {
		return nil
	}
	ids := make([]string, len(msgs))
	headers := make([]string, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if err := m.Validate(s.maxBytes); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		h, err := store.EncodeHeaders(store.WithTraceContext(ctx, m.Headers))
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		headers[i] = h
		ids[i] = m.ID
		if ids[i] == "" {
			ids[i] = store.NewID()
		}
	}
	db = unwrap(db)
	if s.logOnly != nil {
		// One statement, so that a refused Write writes nothing: a logged message cannot be
		// taken back.
		return s.writeLogOnly(ctx, db, msgs, ids, headers)
	}
	for start, end := 0, 0; start < len(msgs); start = end {
		end = s.statementEnd(msgs, start)
		b := builder{d: s.d, args: make([]any, 0, (end-start)*writeColumns)}
		var q strings.Builder
		// created_at comes from the database's clock, as it does for plain-SQL writers. A new
		// message is due at once: next_attempt_at keeps its default until a failure sets it.
		q.WriteString("INSERT INTO " + s.t.String() + " (id, topic, message_key, payload, headers, created_at) VALUES ")
		for i := start; i < end; i++ {
			if i > start {
				q.WriteByte(',')
			}
			fmt.Fprintf(&q, "(%s,%s,%s,%s,%s,%s)", b.arg(ids[i]), b.arg(msgs[i].Topic), b.arg(msgs[i].Key),
				b.arg(payloadArg(msgs[i].Payload)), b.arg(headers[i]), s.d.Now)
		}
		if err := s.insert(ctx, db, q.String(), &b, ids[start:end]); err != nil {
			// Nothing of this Write stays: the statements before wrote all their messages.
			if derr := s.unwrite(ctx, db, ids[:start]); derr != nil {
				return errors.Join(err, derr)
			}
			return err
		}
	}
	s.signal()
	return nil
}

// insert runs one INSERT of the messages ids. An id already in the outbox fails it with
// store.ErrDuplicateID, and a missing table with store.ErrNotMigrated. MySQL and SQLite undo
// just the failed statement; Postgres would abort the caller's transaction, so there the
// statement skips conflicting ids, and the rows it did insert are deleted again: those of
// its ids from its lowest seq on, as a row that took an id before has a lower seq.
func (s *Store) insert(ctx context.Context, db store.Execer, stmt string, b *builder, ids []string) error {
	n := len(ids)
	fail := func(err error) error { return s.writeFailed(n, "messages", err) }
	q, canQuery := db.(interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	})
	if s.d.NotifyWrite == nil || !canQuery {
		if _, err := db.ExecContext(ctx, stmt, b.args...); err != nil {
			return fail(err)
		}
		return nil
	}
	stmt = s.d.NotifyWrite(stmt, b.arg(s.t.channel()))
	var (
		written int
		first   sql.NullInt64
		notify  any
	)
	if err := q.QueryRowContext(ctx, stmt, b.args...).Scan(&written, &first, &notify); err != nil {
		return fail(err)
	}
	if written == n {
		return nil
	}
	if first.Valid {
		u := builder{d: s.d}
		if _, err := db.ExecContext(ctx, "DELETE FROM "+s.t.String()+" WHERE seq >= "+u.arg(first.Int64)+" AND "+u.in("id", ids), u.args...); err != nil {
			return fmt.Errorf("outbox: write %d messages to %s: undo: %w", n, s.t, err)
		}
	}
	return fmt.Errorf("%w: write %d messages to %s: %d of their ids are taken", store.ErrDuplicateID, n, s.t, n-written)
}

// writeFailed is the error of a Write of n messages (what they are) that failed with err:
// one of the store's own where the database's error is one (a duplicate id, a missing table
// or right), err wrapped otherwise.
func (s *Store) writeFailed(n int, what string, err error) error {
	if kind := s.d.Classify(err); kind != nil {
		return fmt.Errorf("%w: write %d %s to %s: %v", kind, n, what, s.t, err)
	}
	return fmt.Errorf("outbox: write %d %s to %s: %w", n, what, s.t, err)
}

// unwrite deletes the messages ids written by the earlier statements of a failed Write.
func (s *Store) unwrite(ctx context.Context, db store.Execer, ids []string) error {
	return s.inChunks(ids, func(ids []string) error {
		b := builder{d: s.d}
		if _, err := db.ExecContext(ctx, "DELETE FROM "+s.t.String()+" WHERE "+b.in("id", ids), b.args...); err != nil {
			return fmt.Errorf("outbox: undo a failed write to %s: %w", s.t, err)
		}
		return nil
	})
}

func payloadArg(p []byte) []byte {
	if p == nil {
		return []byte{}
	}
	return p
}

// writeLogOnly writes msgs to the change log alone, where the log will carry them (Emit).
func (s *Store) writeLogOnly(ctx context.Context, db store.Execer, msgs []store.Message, ids, headers []string) error {
	packed := make([][]byte, len(msgs))
	seen := make(map[string]bool, len(ids))
	for i := range msgs {
		if seen[ids[i]] {
			return fmt.Errorf("%w: write %d log-only messages to %s: id %s is given twice", store.ErrDuplicateID, len(msgs), s.t, ids[i])
		}
		seen[ids[i]] = true
		packed[i] = s.logOnly.Pack(&msgs[i], ids[i], headers[i])
	}
	fail := func(err error) error { return s.writeFailed(len(msgs), "log-only messages", err) }
	res, err := db.ExecContext(ctx, s.logOnly.Emit, ids, packed)
	if err != nil {
		return fail(err)
	}
	if n, err := res.RowsAffected(); err != nil || n == int64(len(msgs)) {
		return err
	}
	// Nothing was written: the log would not carry it, or an id is in the table.
	res, err = db.ExecContext(ctx, "SELECT 1 WHERE "+s.logOnly.Ready)
	if err != nil {
		return fail(err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return store.LogUnavailable("log-only write of %d messages to %s refused, as the log would not carry them: %s", len(msgs), s.t, s.logOnly.NotReady)
	}
	return fmt.Errorf("%w: write %d log-only messages to %s: an id is taken", store.ErrDuplicateID, len(msgs), s.t)
}

// LogOnlyState is the state of a row that Write of a log-only store inserted and deleted at
// once in earlier versions of this module: the reader still tells such rows in the log by it.
const LogOnlyState = "logged"

// statementEnd is where the INSERT that starts at msgs[start] ends: within the database's
// parameter limit, and within maxStatementBytes of payload unless one message is larger alone.
func (s *Store) statementEnd(msgs []store.Message, start int) int {
	end, size := start, 0
	for end < len(msgs) && end-start < (s.d.MaxParams-1)/writeColumns {
		size += len(msgs[end].Payload)
		if end > start && size > maxStatementBytes {
			break
		}
		end++
	}
	return end
}

// maxStatementBytes keeps an INSERT of many messages below MySQL's default packet limit.
const maxStatementBytes = 4 << 20
