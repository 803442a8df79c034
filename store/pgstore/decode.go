package pgstore

import (
	binary_ "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// decodeRow turns an inserted outbox row into a message. Columns are found by name, and come
// in pgoutput's binary format (Postgres 14 and later) or its text format.
func decodeRow(rel *pglogrepl.RelationMessage, tuple *pglogrepl.TupleData) (sqlstore.LogMessage, error) {
	var m sqlstore.LogMessage
	if tuple == nil || len(tuple.Columns) != len(rel.Columns) {
		return m, errors.New("row does not match its relation")
	}
	var seen int
	for i, col := range rel.Columns {
		v := tuple.Columns[i]
		binary := v.DataType == pglogrepl.TupleDataTypeBinary
		if !binary && v.DataType != pglogrepl.TupleDataTypeText {
			continue // NULL, or an unchanged TOAST value, which an insert does not carry
		}
		var err error
		switch col.Name {
		case "seq":
			m.Seq, err = decodeInt8(v.Data, binary)
			seen |= 1
		case "id":
			m.ID = string(v.Data)
			seen |= 2
		case "topic":
			m.Topic = string(v.Data)
			seen |= 4
		case "message_key":
			m.Key = string(v.Data)
		case "payload":
			if binary {
				m.Payload = v.Data
			} else {
				m.Payload, err = decodeBytea(string(v.Data))
			}
			seen |= 8
		case "headers":
			m.Headers, err = store.DecodeHeaders(string(v.Data))
		case "created_at":
			m.CreatedAt, err = decodeTimestamptz(v.Data, binary)
			seen |= 16
		case "state":
			m.LogOnly = string(v.Data) == sqlstore.LogOnlyState
		}
		if err != nil {
			return m, fmt.Errorf("column %s: %w", col.Name, err)
		}
	}
	if seen != 31 {
		return m, fmt.Errorf("row lacks a column (seq, id, topic, payload, created_at): %b", seen)
	}
	return m, nil
}

func decodeInt8(data []byte, binary bool) (int64, error) {
	if !binary {
		return strconv.ParseInt(string(data), 10, 64)
	}
	if len(data) != 8 {
		return 0, fmt.Errorf("binary bigint of %d bytes", len(data))
	}
	return int64(binary_.BigEndian.Uint64(data)), nil
}

// pgEpoch is where Postgres counts binary timestamps from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func decodeTimestamptz(data []byte, binary bool) (time.Time, error) {
	if !binary {
		return time.Parse("2006-01-02 15:04:05.999999-07", string(data))
	}
	if len(data) != 8 {
		return time.Time{}, fmt.Errorf("binary timestamptz of %d bytes", len(data))
	}
	us := int64(binary_.BigEndian.Uint64(data))
	if us == math.MaxInt64 || us == math.MinInt64 {
		return time.Time{}, errors.New("infinite timestamp")
	}
	return pgEpoch.Add(time.Duration(us) * time.Microsecond).UTC(), nil
}

// decodeBytea reads bytea's hex output, \x followed by two digits per byte.
func decodeBytea(s string) ([]byte, error) {
	if !strings.HasPrefix(s, `\x`) {
		return nil, errors.New(`bytea value does not start with \x (bytea_output must be hex)`)
	}
	return hex.DecodeString(s[2:])
}
