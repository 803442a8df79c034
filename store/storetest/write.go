package storetest

import (
	"bytes"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

func testRoundTrip(t *testing.T, h Harness) {
	before := time.Now().Add(-time.Second)
	in := []store.Message{
		{Topic: "payments", Key: "p-1", Payload: []byte(`{"amount":"10.00"}`), Headers: map[string]string{"content-type": "application/json", "trace": "t-1"}},
		{Topic: "payments", Key: "p-2", Payload: []byte{0, 1, 2, 0xff}},
		{Topic: "refunds", Payload: nil},
	}
	wantIDs := write(t, h, in...)
	res := claim(t, h, 10, lease)
	require.NotEmpty(t, res.Token)
	require.Equal(t, wantIDs, ids(res), "claimed in write order")
	for i, got := range res.Messages {
		require.Equal(t, in[i].Topic, got.Topic)
		require.Equal(t, in[i].Key, got.Key)
		require.True(t, bytes.Equal(in[i].Payload, got.Payload), "payload %d: %q", i, got.Payload)
		if len(in[i].Headers) == 0 {
			require.Empty(t, got.Headers)
		} else {
			require.Equal(t, in[i].Headers, got.Headers)
		}
		require.Zero(t, got.Attempts)
		require.WithinRange(t, got.CreatedAt, before, time.Now().Add(time.Second))
	}
}

func testWriteRollback(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, h.Store.Write(ctx, tx, msg("t", "k", "rolled back")))
	require.NoError(t, tx.Rollback())
	require.Empty(t, claim(t, h, 10, lease).Messages, "a rolled-back write leaves nothing to publish")

	kept := write(t, h, msg("t", "k", "committed"))
	require.Equal(t, kept, ids(claim(t, h, 10, lease)))
}

func testBadInput(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	tooBig := make([]byte, store.DefaultMaxPayloadBytes+1)
	cases := []struct {
		name string
		msg  store.Message
		want error
	}{
		{"EmptyTopic", store.Message{Payload: []byte("x")}, store.ErrEmptyTopic},
		{"TopicWithNewline", store.Message{Topic: "a\nb"}, store.ErrInvalidTopic},
		{"LongTopic", store.Message{Topic: strings.Repeat("t", store.MaxTopicLen+1)}, store.ErrInvalidTopic},
		{"LongKey", store.Message{Topic: "t", Key: strings.Repeat("k", store.MaxKeyLen+1)}, store.ErrInvalidKey},
		{"InvalidUTF8Key", store.Message{Topic: "t", Key: "\xff"}, store.ErrInvalidKey},
		{"LongID", store.Message{Topic: "t", ID: strings.Repeat("i", store.MaxIDLen+1)}, store.ErrInvalidID},
		{"PayloadOverLimit", store.Message{Topic: "t", Payload: tooBig}, store.ErrPayloadTooLarge},
		{"EmptyHeaderName", store.Message{Topic: "t", Headers: map[string]string{"": "v"}}, store.ErrInvalidHeader},
		{"HeaderNameWithControl", store.Message{Topic: "t", Headers: map[string]string{"a\x01": "v"}}, store.ErrInvalidHeader},
		{"HeaderValueInvalidUTF8", store.Message{Topic: "t", Headers: map[string]string{"a": "\xc3\x28"}}, store.ErrInvalidHeader},
		{"ReservedHeaderName", store.Message{Topic: "t", Headers: map[string]string{store.ReservedHeaderPrefix + "id": "x"}}, store.ErrInvalidHeader},
		{"HeaderValueWithNUL", store.Message{Topic: "t", Headers: map[string]string{"a": "x\x00y"}}, store.ErrInvalidHeader},
	}
	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	for _, tc := range cases {
		// A bad message anywhere in the call rejects the whole call.
		err := h.Store.Write(ctx, tx, msg("t", "k", "good"), tc.msg)
		require.ErrorIs(t, err, tc.want, tc.name)
	}
	require.ErrorIs(t, h.Store.Write(ctx, nil, msg("t", "", "")), store.ErrNilTx)
	require.ErrorIs(t, h.Store.Write(ctx, (*sql.Tx)(nil), msg("t", "", "")), store.ErrNilTx)
	require.NoError(t, h.Store.Write(ctx, tx), "writing no messages is a no-op")

	// The transaction is still usable, and nothing of the rejected calls was written.
	require.NoError(t, h.Store.Write(ctx, tx, msg("t", "k", "after errors")))
	require.NoError(t, tx.Commit())
	res := claim(t, h, 100, lease)
	require.Len(t, res.Messages, 1)
	require.Equal(t, "after errors", string(res.Messages[0].Payload))
}

// testLargestPayload writes a payload as large as the default limit allows (the harness's
// store has the default MaxPayloadBytes), every byte value in it, and claims it back whole.
func testLargestPayload(t *testing.T, h Harness) {
	payload := make([]byte, store.DefaultMaxPayloadBytes)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	id := write(t, h, store.Message{Topic: "t", Key: "k", Payload: payload})
	res := claim(t, h, 10, lease)
	require.Equal(t, id, ids(res))
	require.True(t, bytes.Equal(payload, res.Messages[0].Payload), "payload of %d bytes back whole", len(res.Messages[0].Payload))
}

func testDuplicateID(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	taken := write(t, h, msg("t", "k", "first"))[0]

	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	dup := msg("t", "k", "again")
	dup.ID = taken
	err = h.Store.Write(ctx, tx, msg("t", "k", "new"), dup)
	require.ErrorIs(t, err, store.ErrDuplicateID)
	fresh := msg("t", "k", "after")
	fresh.ID = store.NewID()
	require.NoError(t, h.Store.Write(ctx, tx, fresh), "the transaction is still usable")
	require.NoError(t, tx.Commit())

	res := claim(t, h, 10, lease)
	var payloads []string
	for _, m := range res.Messages {
		payloads = append(payloads, string(m.Payload))
	}
	require.Equal(t, []string{"first", "after"}, payloads, "nothing of the refused Write was stored")
}

func testWriteMany(t *testing.T, h Harness) {
	const n = 5000 // more than one statement's worth of parameters in some databases
	in := make([]store.Message, n)
	for i := range in {
		in[i] = msg("bulk", fmt.Sprintf("k%d", i%7), fmt.Sprintf("m%d", i))
	}
	want := write(t, h, in...)
	var got []string
	for len(got) < n {
		res := claim(t, h, 1000, lease)
		require.NotEmpty(t, res.Messages)
		got = append(got, ids(res)...)
		require.NoError(t, h.Store.MarkDelivered(ctxFor(t), &store.MarkDeliveredParams{IDs: ids(res)}))
	}
	require.Equal(t, want, got)
}

// testWriteIDs: WriteIDs returns the id of each message in order, keeps an id the caller set,
// and gives the others new UUIDv7s; Write alone gives UUIDv7s too.
func testWriteIDs(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	mine := store.NewID()
	in := []store.Message{msg("t", "a", "1"), {ID: mine, Topic: "t", Key: "a", Payload: []byte("2")}, msg("t", "b", "3")}
	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	got, err := store.WriteIDs(ctx, h.Store, tx, in...)
	require.NoError(t, err)
	require.NoError(t, h.Store.Write(ctx, tx, msg("t", "c", "4")))
	require.NoError(t, tx.Commit())
	require.Len(t, got, 3)
	require.Equal(t, mine, got[1], "an id the caller set is kept")
	require.Empty(t, in[0].ID, "the caller's messages are not changed")

	list, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, list.Messages, 4)
	for i, m := range list.Messages {
		if i < 3 {
			require.Equal(t, got[i], m.ID, "WriteIDs returns the stored ids in write order")
		}
		id, err := uuid.Parse(m.ID)
		require.NoError(t, err)
		if m.ID != mine {
			require.Equal(t, uuid.Version(7), id.Version(), "message %d: ids given by Write are UUIDv7s", i)
		}
	}

	_, err = store.WriteIDs(ctx, h.Store, h.DB, store.Message{Payload: []byte("no topic")})
	require.ErrorIs(t, err, store.ErrEmptyTopic, "bad input gets Write's error and no ids")
}
