package mysqlstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// The outbox columns a logged row is read from.
const (
	colSeq = iota
	colID
	colTopic
	colKey
	colPayload
	colHeaders
	colCreatedAt
	numCols
)

var colNames = [numCols]string{"seq", "id", "topic", "message_key", "payload", "headers", "created_at"}

// columnMap says where each outbox column is in a logged row of the table.
type columnMap struct {
	tableID uint64
	count   int
	idx     [numCols]int // -1: not in the row
}

// mapColumns maps the columns of the rows of table tableID, named in order.
func mapColumns(tableID uint64, names []string) (columnMap, error) {
	m := columnMap{tableID: tableID, count: len(names)}
	for i := range m.idx {
		m.idx[i] = -1
	}
	for i, name := range names {
		for c, want := range colNames {
			if strings.EqualFold(name, want) {
				m.idx[c] = i
			}
		}
	}
	for _, c := range []int{colSeq, colID, colTopic, colPayload, colCreatedAt} {
		if m.idx[c] < 0 {
			return m, fmt.Errorf("%w: the table has no %s column", errColumns, colNames[c])
		}
	}
	return m, nil
}

// errColumns means that the columns of a logged row cannot be told: the table changed since
// it was written and the binlog does not name them, or it lacks an outbox column.
var errColumns = errors.New("outbox: cannot map the logged row to the outbox columns")

// columnCache maps the columns of the outbox table's rows, from the names in the table map
// event when the server logs them (binlog_row_metadata=FULL), and otherwise from the table's
// columns in information_schema, read again when the table id or column count changes.
type columnCache struct {
	// lookup returns the table's columns in order: all of them, and those stored (without
	// virtual generated columns, which some servers leave out of row images).
	lookup func(ctx context.Context) (all, stored []string, err error)
	cur    columnMap
	named  bool // cur came from the names in a table map event
	ok     bool
}

func (cc *columnCache) get(ctx context.Context, t *replication.TableMapEvent) (columnMap, error) {
	count := int(t.ColumnCount)
	if len(t.ColumnName) == count && count > 0 {
		if cc.ok && cc.named && cc.cur.tableID == t.TableID && cc.cur.count == count {
			return cc.cur, nil
		}
		names := make([]string, count)
		for i, n := range t.ColumnName {
			names[i] = string(n)
		}
		m, err := mapColumns(t.TableID, names)
		if err != nil {
			return m, err
		}
		cc.cur, cc.named, cc.ok = m, true, true
		return m, nil
	}
	if cc.ok && !cc.named && cc.cur.tableID == t.TableID && cc.cur.count == count {
		return cc.cur, nil
	}
	all, stored, err := cc.lookup(ctx)
	if err != nil {
		return columnMap{}, err
	}
	var names []string
	switch count {
	case len(all):
		names = all
	case len(stored):
		names = stored
	default:
		return columnMap{}, fmt.Errorf("%w: %d columns logged, %d in the table (it changed since; with binlog_row_metadata=FULL the binlog names them)",
			errColumns, count, len(all))
	}
	m, err := mapColumns(t.TableID, names)
	if err != nil {
		return m, err
	}
	cc.cur, cc.named, cc.ok = m, false, true
	return m, nil
}

// decodeRow turns a logged row of the outbox table, as go-mysql decodes it, into a message.
// It copies what it keeps: go-mysql's strings and slices may share the event's buffer.
func decodeRow(m columnMap, row []any) (sqlstore.LogMessage, error) {
	var lm sqlstore.LogMessage
	if len(row) != m.count {
		return lm, fmt.Errorf("row has %d columns, the table map %d", len(row), m.count)
	}
	get := func(c int) (any, bool) {
		if i := m.idx[c]; i >= 0 && i < len(row) {
			return row[i], true
		}
		return nil, false
	}
	var err error
	v, _ := get(colSeq)
	if lm.Seq, err = asInt64(v); err != nil {
		return lm, fmt.Errorf("seq: %w", err)
	}
	v, _ = get(colID)
	if lm.ID, err = asString(v); err != nil {
		return lm, fmt.Errorf("id: %w", err)
	}
	if lm.ID == "" {
		return lm, errors.New("id is empty")
	}
	v, _ = get(colTopic)
	if lm.Topic, err = asString(v); err != nil {
		return lm, fmt.Errorf("topic: %w", err)
	}
	if v, ok := get(colKey); ok && v != nil {
		if lm.Key, err = asString(v); err != nil {
			return lm, fmt.Errorf("message_key: %w", err)
		}
	}
	v, _ = get(colPayload)
	if lm.Payload, err = asBytes(v); err != nil {
		return lm, fmt.Errorf("payload: %w", err)
	}
	if v, ok := get(colHeaders); ok && v != nil {
		h, err := asString(v)
		if err != nil {
			return lm, fmt.Errorf("headers: %w", err)
		}
		if lm.Headers, err = store.DecodeHeaders(h); err != nil {
			return lm, err
		}
	}
	v, _ = get(colCreatedAt)
	if lm.CreatedAt, err = asTime(v); err != nil {
		return lm, fmt.Errorf("created_at: %w", err)
	}
	return lm, nil
}

func asInt64(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		return v, nil
	case int32:
		return int64(v), nil
	case int16:
		return int64(v), nil
	case int8:
		return int64(v), nil
	case int:
		return int64(v), nil
	case uint64:
		if v > math.MaxInt64 {
			return 0, fmt.Errorf("%d is out of range", v)
		}
		return int64(v), nil
	case uint32:
		return int64(v), nil
	}
	return 0, fmt.Errorf("unexpected %T", v)
}

func asString(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return strings.Clone(v), nil
	case []byte:
		return string(v), nil
	}
	return "", fmt.Errorf("unexpected %T", v)
}

func asBytes(v any) ([]byte, error) {
	switch v := v.(type) {
	case []byte:
		return append([]byte{}, v...), nil
	case string:
		return []byte(v), nil
	}
	return nil, fmt.Errorf("unexpected %T", v)
}

// asTime reads a DATETIME: go-mysql gives a time.Time in UTC when it parses times, and a
// string for dates it cannot represent (before 1970, or zero).
func asTime(v any) (time.Time, error) {
	switch v := v.(type) {
	case time.Time:
		return v.UTC(), nil
	case string:
		t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", v, time.UTC)
		if err != nil {
			return time.Time{}, err
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("unexpected %T", v)
}
