package pgstore

import (
	"bytes"
	binary_ "encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
)

// Log-only writes are logical decoding messages (pg_logical_emit_message, transactional), one
// per outbox message: the WAL carries them in commit order like inserted rows, while the table
// and its indexes are never touched. An insert and a delete of each row cost the writer ten
// times as much, and the WAL sender decoded two records per message where it now decodes one.
//
// A message's content is the format byte, its seq and its creation time (taken in SQL, from
// the table's identity sequence and the database's clock, as for a row), then what Go packs:
// id, topic, key and headers, each as a uvarint length and its bytes, and the payload.

// logMessageFormat is the first byte of a message's content; a reader refuses others.
const logMessageFormat = 1

// logMessagePrefix is the prefix of the logical messages that carry the messages of the
// table whose object id is rel. Every logical message of the database reaches every slot
// that asks for messages: the reader keeps those of its table.
func logMessagePrefix(rel uint32) string { return fmt.Sprintf("outbox:%d", rel) }

// packMessage is the part of a log-only message's content that Go writes.
func packMessage(m *store.Message, id, headers string) []byte {
	b := make([]byte, 0, 4*binary_.MaxVarintLen32+len(id)+len(m.Topic)+len(m.Key)+len(headers)+len(m.Payload))
	for _, s := range []string{id, m.Topic, m.Key, headers} {
		b = binary_.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, m.Payload...)
}

// unpackMessage reads a log-only message's content, copying what it keeps.
func unpackMessage(content []byte) (sqlstore.LogMessage, error) {
	var m sqlstore.LogMessage
	if len(content) < 17 {
		return m, errors.New("log-only message: cut short")
	}
	if content[0] != logMessageFormat {
		return m, fmt.Errorf("log-only message of format %d; this reader knows format %d (a newer version of the library wrote it)", content[0], logMessageFormat)
	}
	m.LogOnly = true
	m.Seq = int64(binary_.BigEndian.Uint64(content[1:]))
	m.CreatedAt = time.UnixMicro(int64(binary_.BigEndian.Uint64(content[9:]))).UTC()
	rest := content[17:]
	var fields [4]string
	for i := range fields {
		n, size := binary_.Uvarint(rest)
		if size <= 0 || n > uint64(len(rest)-size) {
			return m, errors.New("log-only message: cut short")
		}
		fields[i], rest = string(rest[size:size+int(n)]), rest[size+int(n):]
	}
	m.ID, m.Topic, m.Key = fields[0], fields[1], fields[2]
	var err error
	if m.Headers, err = store.DecodeHeaders(fields[3]); err != nil {
		return m, fmt.Errorf("log-only message %s: %w", m.ID, err)
	}
	m.Payload = bytes.Clone(rest)
	return m, nil
}

// readLogicalMessage reads pgoutput's message message (what follows its type byte): whether
// it is transactional, its prefix and its content, both of which alias data.
func readLogicalMessage(data []byte) (transactional bool, prefix, content []byte, err error) {
	if len(data) < 10 {
		return false, nil, nil, errors.New("logical message: cut short")
	}
	transactional = data[0]&1 == 1
	data = data[9:] // flags and LSN
	end := bytes.IndexByte(data, 0)
	if end < 0 {
		return false, nil, nil, errors.New("logical message: prefix not terminated")
	}
	prefix, data = data[:end], data[end+1:]
	if len(data) < 4 {
		return false, nil, nil, errors.New("logical message: cut short")
	}
	size := binary_.BigEndian.Uint32(data)
	if uint64(size) != uint64(len(data)-4) {
		return false, nil, nil, errors.New("logical message: content length does not match")
	}
	return transactional, prefix, data[4:], nil
}
