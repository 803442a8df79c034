package pgstore

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

// outboxRelation is the relation message pgoutput sends for the outbox table.
var outboxRelation = func() *pglogrepl.RelationMessage {
	rel := &pglogrepl.RelationMessage{RelationName: "outbox", Namespace: "public"}
	for _, name := range []string{"seq", "id", "topic", "message_key", "payload", "headers", "created_at", "state", "attempts"} {
		rel.Columns = append(rel.Columns, &pglogrepl.RelationMessageColumn{Name: name})
	}
	rel.ColumnNum = uint16(len(rel.Columns))
	return rel
}()

func tuple(kind byte, values ...[]byte) []column {
	var cols []column
	for _, v := range values {
		c := column{kind: kind, data: v}
		if v == nil {
			c.kind = pglogrepl.TupleDataTypeNull
		}
		cols = append(cols, c)
	}
	return cols
}

// insertMessage is pgoutput's insert message of cols into relation rel, after its type byte.
func insertMessage(rel uint32, cols []column) []byte {
	b := binary.BigEndian.AppendUint32(nil, rel)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.kind)
		if c.kind == pglogrepl.TupleDataTypeText || c.kind == pglogrepl.TupleDataTypeBinary {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
			b = append(b, c.data...)
		}
	}
	return b
}

// readInsert reads what pglogrepl's decoder reads, without copying; a message cut short
// anywhere gets an error.
func TestReadInsert(t *testing.T) {
	cols := tuple(pglogrepl.TupleDataTypeBinary, be64(7), []byte("id-7"), []byte(""), nil, []byte{0, 1, 2})
	cols = append(cols, column{kind: pglogrepl.TupleDataTypeToast})
	msg := insertMessage(16384, cols)

	rel, got, err := readInsert(msg, nil)
	require.NoError(t, err)
	require.Equal(t, uint32(16384), rel)
	theirs, err := pglogrepl.Parse(append([]byte{byte(pglogrepl.MessageTypeInsert)}, msg...))
	require.NoError(t, err)
	ins := theirs.(*pglogrepl.InsertMessage)
	require.Equal(t, ins.RelationID, rel)
	require.Len(t, got, len(ins.Tuple.Columns))
	for i, c := range ins.Tuple.Columns {
		require.Equal(t, c.DataType, got[i].kind, "column %d", i)
		require.Equal(t, len(c.Data), len(got[i].data), "column %d", i)
		if len(c.Data) > 0 {
			require.Equal(t, c.Data, got[i].data, "column %d", i)
		}
	}

	for n := range len(msg) {
		_, _, err := readInsert(msg[:n], nil)
		require.Error(t, err, "cut at %d of %d bytes", n, len(msg))
	}
	old := append([]byte(nil), msg...)
	old[4] = 'K' // an old key, which an insert does not send
	_, _, err = readInsert(old, nil)
	require.Error(t, err)
}

// A decoded message keeps none of the bytes of the message it was read from, which the
// connection reuses for the next one.
func TestDecodeRowCopies(t *testing.T) {
	cols := tuple(pglogrepl.TupleDataTypeBinary, be64(1), []byte("id"), []byte("t"), []byte("k"), []byte("payload"), []byte("{}"), be64(0), []byte("pending"), be64(0)[:4])
	m, err := decodeRow(outboxRelation, cols)
	require.NoError(t, err)
	for _, c := range cols {
		for i := range c.data {
			c.data[i] = 'x'
		}
	}
	require.Equal(t, "payload", string(m.Payload))
	require.Equal(t, "id", m.ID)
}

func be64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// The text format (Postgres 12 and 13) and the binary one (14 and later) give the same
// message.
func TestDecodeRowTextAndBinary(t *testing.T) {
	created := time.Date(2026, 11, 26, 10, 0, 0, 123456000, time.UTC)
	text := tuple(pglogrepl.TupleDataTypeText, []byte("42"), []byte("id-1"), []byte("payments"), []byte("pay-42"),
		[]byte(`\x00ff7b`), []byte(`{"a":"b"}`), []byte("2026-11-26 10:00:00.123456+00"), []byte("pending"), []byte("0"))
	bin := tuple(pglogrepl.TupleDataTypeBinary, be64(42), []byte("id-1"), []byte("payments"), []byte("pay-42"),
		[]byte{0x00, 0xff, 0x7b}, []byte(`{"a":"b"}`), be64(created.Sub(pgEpoch).Microseconds()), []byte("pending"), be64(0)[:4])
	for name, tup := range map[string][]column{"text": text, "binary": bin} {
		m, err := decodeRow(outboxRelation, tup)
		require.NoError(t, err, name)
		require.Equal(t, int64(42), m.Seq)
		require.Equal(t, "id-1", m.ID)
		require.Equal(t, "payments", m.Topic)
		require.Equal(t, "pay-42", m.Key)
		require.Equal(t, []byte{0x00, 0xff, 0x7b}, m.Payload)
		require.Equal(t, map[string]string{"a": "b"}, m.Headers)
		require.True(t, created.Equal(m.CreatedAt), "%s: %v", name, m.CreatedAt)
	}
}

// Each malformed row gets an error, and the reader leaves its message to the sweep.
func TestDecodeRowRejects(t *testing.T) {
	good := [][]byte{be64(1), []byte("id"), []byte("t"), []byte("k"), []byte("p"), []byte("{}"), be64(0), []byte("pending"), be64(0)[:4]}
	with := func(i int, v []byte) []column {
		vs := append([][]byte(nil), good...)
		vs[i] = v
		return tuple(pglogrepl.TupleDataTypeBinary, vs...)
	}
	for name, tc := range map[string][]column{
		"short seq":          with(0, []byte{1, 2}),
		"null id":            with(1, nil),
		"bad headers":        with(5, []byte("{")),
		"short timestamp":    with(6, []byte{0}),
		"infinite timestamp": with(6, be64(1<<63-1)),
		"column count":       tuple(pglogrepl.TupleDataTypeBinary, good[:3]...),
		"text bytea not hex": tuple(pglogrepl.TupleDataTypeText, []byte("1"), []byte("id"), []byte("t"), []byte(""), []byte("zz"), []byte("{}"), []byte("2026-01-01 00:00:00+00"), []byte("pending"), []byte("0")),
		"text bad time":      tuple(pglogrepl.TupleDataTypeText, []byte("1"), []byte("id"), []byte("t"), []byte(""), []byte(`\x00`), []byte("{}"), []byte("yesterday"), []byte("pending"), []byte("0")),
	} {
		_, err := decodeRow(outboxRelation, tc)
		require.Error(t, err, name)
	}
}

// FuzzDecodeRow: any column values give a message or an error, never a panic.
func FuzzDecodeRow(f *testing.F) {
	f.Add(true, be64(1), []byte("id"), []byte("t"), []byte("k"), []byte("p"), []byte("{}"), be64(0))
	f.Add(false, []byte("1"), []byte("id"), []byte("t"), []byte(""), []byte(`\x00`), []byte(`{"a":"b"}`), []byte("2026-01-01 00:00:00.5+00"))
	f.Fuzz(func(t *testing.T, bin bool, seq, id, topic, key, payload, headers, created []byte) {
		kind := byte(pglogrepl.TupleDataTypeText)
		if bin {
			kind = pglogrepl.TupleDataTypeBinary
		}
		m, err := decodeRow(outboxRelation, tuple(kind, seq, id, topic, key, payload, headers, created, []byte("pending"), []byte("0")))
		if err == nil && m.ID != string(id) {
			t.Fatalf("decoded id %q from %q", m.ID, id)
		}
	})
}
