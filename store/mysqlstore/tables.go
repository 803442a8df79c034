package mysqlstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/replication"
)

// Tables of the binlog, as the reader sees them.
const (
	tableOther = iota
	tableOutbox
	tablePosition
)

// which tells which of the reader's tables t is.
func (r *reader) which(t *replication.TableMapEvent) int {
	eq := func(a []byte, b string) bool {
		if r.fold {
			return strings.EqualFold(string(a), b)
		}
		return string(a) == b
	}
	switch {
	case !eq(t.Schema, r.schema):
		return tableOther
	case eq(t.Table, r.s.TableName()):
		return tableOutbox
	case eq(t.Table, r.s.TableName()+"_log_position"):
		return tablePosition
	}
	return tableOther
}

// decodeRows decodes the rows of inserts into the outbox table only: the binlog holds every
// table of the server. go-mysql calls it from its own goroutine.
func (r *reader) decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	if e.Table == nil || e.Type() != replication.EnumRowsEventTypeInsert || r.which(e.Table) != tableOutbox {
		return nil
	}
	return e.DecodeData(pos, data)
}

// lookupColumns reads the outbox table's columns from information_schema.
func (r *reader) lookupColumns(ctx context.Context) (all, stored []string, err error) {
	rows, err := r.s.DB().QueryContext(ctx, "SELECT column_name, extra FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
		r.schema, r.s.TableName())
	if err != nil {
		return nil, nil, fmt.Errorf("outbox: log reader: read the columns of %s: %w", r.s.Table(), err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, extra string
		if err := rows.Scan(&name, &extra); err != nil {
			return nil, nil, err
		}
		all = append(all, name)
		if !strings.Contains(strings.ToUpper(extra), "VIRTUAL") {
			stored = append(stored, name)
		}
	}
	return all, stored, rows.Err()
}
