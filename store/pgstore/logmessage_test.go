package pgstore

import (
	binary_ "encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// content is a log-only message's content as the database completes it: format, seq and
// creation time before what Go packed.
func content(seq int64, created time.Time, packed []byte) []byte {
	b := []byte{logMessageFormat}
	b = binary_.BigEndian.AppendUint64(b, uint64(seq))
	b = binary_.BigEndian.AppendUint64(b, uint64(created.UnixMicro()))
	return append(b, packed...)
}

func TestUnpackMessageReadsWhatPackWrote(t *testing.T) {
	created := time.Date(2026, 12, 1, 9, 30, 0, 123456000, time.UTC)
	for _, m := range []store.Message{
		{Topic: "payments", Key: "order-1", Payload: []byte{0, 1, 2, 255}},
		{Topic: "t", Payload: []byte{}}, // no key, empty payload
		{Topic: "t", Key: string(make([]byte, 300)), Payload: make([]byte, 70000)},
	} {
		got, err := unpackMessage(content(42, created, packMessage(&m, "id-1", `{"tenant":"acme"}`)))
		require.NoError(t, err)
		require.True(t, got.LogOnly)
		require.Equal(t, int64(42), got.Seq)
		require.Equal(t, created, got.CreatedAt)
		require.Equal(t, "id-1", got.ID)
		require.Equal(t, m.Topic, got.Topic)
		require.Equal(t, m.Key, got.Key)
		require.Equal(t, m.Payload, got.Payload)
		require.NotNil(t, got.Payload)
		require.Equal(t, map[string]string{"tenant": "acme"}, got.Headers)
	}
}

// Every truncation of a message is an error, never a message with a part missing; so are
// another format and headers that do not decode.
func TestUnpackMessageRefusesWhatItCannotRead(t *testing.T) {
	m := store.Message{Topic: "payments", Key: "k"}
	whole := content(1, time.Now(), packMessage(&m, "id", "{}"))
	for n := range len(whole) - 1 { // with the payload empty, every byte is needed
		_, err := unpackMessage(whole[:n])
		require.Error(t, err, "cut at %d", n)
	}
	other := append([]byte{2}, whole[1:]...)
	_, err := unpackMessage(other)
	require.ErrorContains(t, err, "format 2")
	_, err = unpackMessage(content(1, time.Now(), packMessage(&m, "id", "not json")))
	require.ErrorContains(t, err, "log-only message id")
}

// The payload is copied: the connection reuses the buffer the message came in.
func TestUnpackMessageCopies(t *testing.T) {
	m := store.Message{Topic: "t", Payload: []byte("payload")}
	c := content(1, time.Now(), packMessage(&m, "id", "{}"))
	got, err := unpackMessage(c)
	require.NoError(t, err)
	clear(c)
	require.Equal(t, "payload", string(got.Payload))
}

func TestReadLogicalMessage(t *testing.T) {
	msg := func(flags byte, prefix string, body []byte, size int) []byte {
		b := []byte{flags}
		b = binary_.BigEndian.AppendUint64(b, 0x16B3748)
		b = append(append(b, prefix...), 0)
		b = binary_.BigEndian.AppendUint32(b, uint32(size))
		return append(b, body...)
	}
	tx, prefix, body, err := readLogicalMessage(msg(1, "outbox:16384", []byte("abc"), 3))
	require.NoError(t, err)
	require.True(t, tx)
	require.Equal(t, "outbox:16384", string(prefix))
	require.Equal(t, "abc", string(body))
	tx, _, _, err = readLogicalMessage(msg(0, "p", nil, 0))
	require.NoError(t, err)
	require.False(t, tx)

	_, _, _, err = readLogicalMessage(msg(1, "p", []byte("abc"), 4))
	require.ErrorContains(t, err, "length")
	good := msg(1, "p", []byte("abc"), 3)
	noEnd := good[:9+1] // flags, LSN and a prefix without its terminator
	_, _, _, err = readLogicalMessage(noEnd)
	require.Error(t, err)
	for n := range len(good) - 1 {
		_, _, _, err := readLogicalMessage(good[:n])
		require.Error(t, err, "cut at %d", n)
	}
}
