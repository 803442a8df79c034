package mysqlstore

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
)

// handle follows one event: transactions, their outbox rows, and the position.
func (r *reader) handle(ctx context.Context, e *replication.BinlogEvent, nested bool) error {
	h := e.Header
	switch h.EventType {
	case replication.HEARTBEAT_EVENT, replication.HEARTBEAT_LOG_EVENT_V2:
		// Sent when the server has nothing more: its offset is the end of the log, which the
		// reader has reached (the events skipped to get there are not sent).
		if ge, ok := e.Event.(*replication.GenericEvent); ok && !r.inTx && h.LogPos > 0 &&
			strings.TrimRight(string(ge.Data), "\x00") == r.curFile {
			r.curPos = h.LogPos
		}
	default:
		// Events inside a transaction payload (MySQL's binlog compression) carry no position.
		if !nested && h.LogPos > 0 {
			r.curPos = h.LogPos
		}
	}
	switch ev := e.Event.(type) {
	case *replication.RotateEvent:
		r.curFile, r.curPos = string(ev.NextLogName), uint32(ev.Position)
		if h.Flags&replication.LOG_EVENT_ARTIFICIAL_F == 0 {
			// The old file may be purged now: store a position in the new one.
			r.dirty = true
		}
	case *replication.MariadbGTIDEvent:
		r.begin()
		// Read from the raw event: go-mysql keeps the first GTID event of each domain and
		// server in its GTID set and updates it in place as later ones arrive.
		if body := e.RawData; len(body) >= replication.EventHeaderSize+12 {
			body = body[replication.EventHeaderSize:]
			r.txGTID = gtid{server: h.ServerID, seq: binary.LittleEndian.Uint64(body)}
			r.txDom = binary.LittleEndian.Uint32(body[8:])
			r.hasGTID = true
		}
	case *replication.GTIDEvent:
		r.begin()
	case *replication.QueryEvent:
		r.statement(ev.Query)
	case *replication.XIDEvent:
		r.end(true)
	case *replication.RowsEvent:
		if err := r.rows(ctx, ev); err != nil {
			return err
		}
	case *replication.TransactionPayloadEvent:
		for _, ne := range ev.Events {
			if err := r.handle(ctx, ne, true); err != nil {
				return err
			}
		}
	}
	if !r.inTx {
		r.read.file, r.read.pos = r.curFile, r.curPos
	}
	return nil
}

// statement follows a statement logged as a query event: one that begins or ends a
// transaction, or one that stands on its own (DDL).
func (r *reader) statement(q []byte) {
	if len(q) > 16 {
		q = q[:16]
	}
	head := strings.ToUpper(strings.TrimSpace(string(q)))
	switch {
	case head == "BEGIN", strings.HasPrefix(head, "XA START"), strings.HasPrefix(head, "XA BEGIN"),
		strings.HasPrefix(head, "XA END"), strings.HasPrefix(head, "SAVEPOINT"), strings.HasPrefix(head, "ROLLBACK TO"):
		r.inTx = true
	case head == "COMMIT":
		r.end(true)
	case head == "ROLLBACK":
		r.end(false)
	default: // DDL, or another statement logged on its own
		r.txOther = true
		r.end(true)
	}
}

// begin starts a transaction. One still open did not end in a way the reader knows (an XA
// PREPARE): its rows are left to the sweep.
func (r *reader) begin() {
	if r.inTx {
		r.end(false)
	}
	r.inTx = true
}

// end ends the current transaction; committed, its outbox messages join the batch.
func (r *reader) end(commit bool) {
	if r.hasGTID {
		r.read.gtids[r.txDom] = r.txGTID
	}
	r.read.file, r.read.pos = r.curFile, r.curPos
	if commit && len(r.txMsgs) > 0 {
		if len(r.batch) == 0 {
			r.batchAt = time.Now()
		}
		r.batch = append(r.batch, r.txMsgs...)
		r.batchTxs = append(r.batchTxs, batchTx{end: len(r.batch), pos: r.read.clone()})
	}
	if r.txOther {
		r.dirty = true
	}
	r.inTx, r.hasGTID, r.txOther, r.txMsgs = false, false, false, nil
}

// rows takes the outbox messages of a rows event.
func (r *reader) rows(ctx context.Context, ev *replication.RowsEvent) error {
	if !r.inTx {
		r.begin()
	}
	if ev.Table == nil {
		r.txOther = true
		return nil
	}
	switch r.which(ev.Table) {
	case tableOther:
		r.txOther = true
		return nil
	case tablePosition:
		return nil
	}
	if ev.Type() != replication.EnumRowsEventTypeInsert || len(ev.Rows) == 0 {
		return nil
	}
	cols, err := r.cols.get(ctx, ev.Table)
	if errors.Is(err, errColumns) {
		// The sweep delivers what the log cannot.
		if r.warned != ev.Table.TableID {
			r.warned = ev.Table.TableID
			r.log.Warn("cannot map the logged rows of the outbox table to its columns; the sweep will deliver them", slog.Any("error", err))
		}
		return nil
	}
	if err != nil {
		return err
	}
	for _, row := range ev.Rows {
		m, err := decodeRow(cols, row)
		if err != nil {
			r.log.Error("cannot decode a logged outbox row; the sweep will deliver it", slog.Any("error", err))
			continue
		}
		r.txMsgs = append(r.txMsgs, m)
	}
	return nil
}
