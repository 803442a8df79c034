package mysqlstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/stretchr/testify/require"
)

// The outbox table's columns as Migrate creates them.
var migratedColumns = []string{"seq", "id", "topic", "message_key", "payload", "headers", "created_at", "state", "attempts",
	"next_attempt_at", "claimed_until", "claim_token", "last_error", "delivered_at", "held", "waiting"}

func migratedRow(seq int64, id, topic string, key any, payload, headers any, created any) []any {
	return []any{seq, id, topic, key, payload, headers, created, "pending", int32(0), time.Unix(0, 0).UTC(), time.Unix(0, 0).UTC(), nil, nil, nil, int8(0), int8(0)}
}

func TestDecodeRow(t *testing.T) {
	cols, err := mapColumns(7, migratedColumns)
	require.NoError(t, err)
	created := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	tests := []struct {
		name    string
		row     []any
		wantErr string
	}{
		{name: "as go-mysql decodes the table", row: migratedRow(42, "id-1", "orders", "k", []byte{0xff, 0}, []byte(`{"a":"b"}`), created)},
		{name: "text as bytes and strings", row: migratedRow(42, "id-1", "orders", []byte("k"), "\xff\x00", `{"a":"b"}`, created)},
		{name: "a datetime go-mysql leaves as text", row: migratedRow(42, "id-1", "orders", "k", []byte{0xff, 0}, []byte(`{"a":"b"}`), "2026-01-02 03:04:05.123456")},
		{name: "null key and headers", row: migratedRow(42, "id-1", "orders", nil, []byte{0xff, 0}, nil, created)},
		{name: "bad headers", row: migratedRow(42, "id-1", "orders", "k", []byte{}, []byte(`[1]`), created), wantErr: "headers"},
		{name: "null payload", row: migratedRow(42, "id-1", "orders", "k", nil, nil, created), wantErr: "payload"},
		{name: "zero date", row: migratedRow(42, "id-1", "orders", "k", []byte{}, nil, "0000-00-00 00:00:00"), wantErr: "created_at"},
		{name: "empty id", row: migratedRow(42, "", "orders", "k", []byte{}, nil, created), wantErr: "id"},
		{name: "row shorter than the table map", row: migratedRow(42, "id-1", "orders", "k", []byte{}, nil, created)[:3], wantErr: "columns"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decodeRow(cols, tc.row)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, int64(42), m.Seq)
			require.Equal(t, "id-1", m.ID)
			require.Equal(t, "orders", m.Topic)
			require.Equal(t, []byte{0xff, 0}, m.Payload)
			require.True(t, created.Equal(m.CreatedAt))
			require.Equal(t, time.UTC, m.CreatedAt.Location())
			if tc.row[colKey] != nil {
				require.Equal(t, "k", m.Key)
				require.Equal(t, map[string]string{"a": "b"}, m.Headers)
			}
		})
	}
}

func TestDecodeRowCopiesWhatItKeeps(t *testing.T) {
	cols, err := mapColumns(7, migratedColumns)
	require.NoError(t, err)
	payload := []byte("payload")
	m, err := decodeRow(cols, migratedRow(1, "id", "t", "", payload, nil, time.Now()))
	require.NoError(t, err)
	payload[0] = 'X'
	require.Equal(t, "payload", string(m.Payload), "go-mysql's buffers may be reused")
}

func TestColumnCacheMapsByNameOrByTable(t *testing.T) {
	ctx := context.Background()
	// The table as it is now: topic moved to the end.
	now := []string{"seq", "id", "message_key", "payload", "headers", "created_at", "topic"}
	lookups := 0
	cc := columnCache{lookup: func(context.Context) ([]string, []string, error) {
		lookups++
		return now, now, nil
	}}

	// A row logged before the change, with the names in the binlog: mapped by them.
	before := &replication.TableMapEvent{TableID: 1, ColumnCount: 7,
		ColumnName: [][]byte{[]byte("seq"), []byte("id"), []byte("topic"), []byte("message_key"), []byte("payload"), []byte("headers"), []byte("created_at")}}
	m, err := cc.get(ctx, before)
	require.NoError(t, err)
	require.Equal(t, 2, m.idx[colTopic])
	require.Zero(t, lookups, "names in the binlog need no lookup")

	// Without names: the table's current order, looked up once per table id.
	after := &replication.TableMapEvent{TableID: 2, ColumnCount: 7}
	m, err = cc.get(ctx, after)
	require.NoError(t, err)
	require.Equal(t, 6, m.idx[colTopic])
	_, err = cc.get(ctx, after)
	require.NoError(t, err)
	require.Equal(t, 1, lookups)

	// A column count the table no longer has: not mapped (the sweep delivers such rows).
	_, err = cc.get(ctx, &replication.TableMapEvent{TableID: 3, ColumnCount: 6})
	require.ErrorIs(t, err, errColumns)
	require.Equal(t, 2, lookups)

	// Virtual columns that the row image leaves out.
	cc.lookup = func(context.Context) ([]string, []string, error) {
		return append(now, "virt"), now, nil
	}
	m, err = cc.get(ctx, &replication.TableMapEvent{TableID: 4, ColumnCount: 7})
	require.NoError(t, err)
	require.Equal(t, 6, m.idx[colTopic])

	// A lookup that fails is an error worth a retry, not a row to skip.
	boom := errors.New("connection lost")
	cc.lookup = func(context.Context) ([]string, []string, error) { return nil, nil, boom }
	_, err = cc.get(ctx, &replication.TableMapEvent{TableID: 5, ColumnCount: 7})
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, errColumns)

	_, err = mapColumns(1, []string{"seq", "id"})
	require.ErrorIs(t, err, errColumns)
}

func TestGTIDPositions(t *testing.T) {
	for _, s := range []string{"", "0-1-5", "0-1-5,1-2-7", "3-4294967295-18446744073709551615,0-1-1"} {
		m, err := parseGTIDs(s)
		require.NoError(t, err, s)
		again, err := parseGTIDs(formatGTIDs(m))
		require.NoError(t, err)
		require.Equal(t, m, again)
	}
	require.Equal(t, "0-1-1,3-2-9", formatGTIDs(map[uint32]gtid{3: {2, 9}, 0: {1, 1}}))
	for _, bad := range []string{"0-1", "a-b-c", "0-1-2-3", "0-1--1"} {
		_, err := parseGTIDs(bad)
		require.Error(t, err, bad)
	}

	r := &reader{mariadb: true}
	s := sample{gtids: map[uint32]gtid{0: {1, 10}, 1: {2, 5}}}
	require.True(t, r.covers(position{gtids: map[uint32]gtid{0: {1, 10}, 1: {3, 6}}}, s))
	require.False(t, r.covers(position{gtids: map[uint32]gtid{0: {1, 10}}}, s))
	require.False(t, r.covers(position{gtids: map[uint32]gtid{0: {1, 9}, 1: {2, 5}}}, s))

	r.mariadb = false
	s = sample{file: "bin.000010", pos: 400}
	require.True(t, r.covers(position{file: "bin.000010", pos: 400}, s))
	require.True(t, r.covers(position{file: "bin.000011", pos: 4}, s))
	require.False(t, r.covers(position{file: "bin.000009", pos: 9000}, s))
	require.False(t, r.covers(position{}, s))
	require.Equal(t, -1, compareFiles("bin.999999", "bin.1000000"))
}

// FuzzDecodeRow feeds the row decoder values of the types go-mysql can produce, in any
// column: it must return a message or an error, never panic.
func FuzzDecodeRow(f *testing.F) {
	f.Add(int64(1), "id", "topic", []byte("key"), []byte{0xff}, `{"a":"b"}`, "2026-01-02 03:04:05.5", uint32(0))
	f.Add(int64(-1), "", "", []byte{}, []byte{}, `{`, "0000-00-00 00:00:00", uint32(0xffffffff))
	f.Add(int64(1<<62), "\x00", "\xff", []byte(nil), []byte(nil), `null`, "", uint32(0x12345678))
	cols, err := mapColumns(1, migratedColumns)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, seq int64, id, topic string, key, payload []byte, headers, created string, kinds uint32) {
		// Two bits per column choose how go-mysql might have decoded its value.
		vals := []any{seq, id, topic, key, payload, headers, created}
		row := make([]any, len(migratedColumns))
		for i := range row {
			row[i] = int8(0)
		}
		for i, v := range vals {
			kind := kinds >> (2 * i) & 3
			switch kind {
			case 0:
				row[i] = v
			case 1:
				row[i] = nil
			case 2:
				switch v := v.(type) {
				case string:
					row[i] = []byte(v)
				case []byte:
					row[i] = string(v)
				case int64:
					row[i] = uint64(v)
				}
			case 3:
				if i == colCreatedAt {
					row[i] = time.Unix(seq, 0)
				} else {
					row[i] = float64(seq)
				}
			}
		}
		if kinds>>30 == 3 {
			row = row[:int(kinds)%len(row)]
		}
		m, err := decodeRow(cols, row)
		if err == nil && m.ID == "" {
			t.Fatal("decoded a message without an id")
		}
	})
}
