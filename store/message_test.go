package store_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

func TestNewIDIsSortableUUIDv7(t *testing.T) {
	prev := store.NewID()
	for range 1000 {
		id := store.NewID()
		require.Len(t, id, 36)
		require.Equal(t, byte('7'), id[14], "version nibble")
		require.Less(t, prev, id, "ids sort by creation")
		prev = id
	}
}

func TestValidAndEmptyHeadersRoundTrip(t *testing.T) {
	for _, h := range []map[string]string{nil, {}, {"a": "1", "content-type": "application/json", "ünï": "cödé", "empty": ""}} {
		m := store.Message{Topic: "t", Headers: h}
		require.NoError(t, m.Validate(10))
		enc, err := store.EncodeHeaders(h)
		require.NoError(t, err)
		dec, err := store.DecodeHeaders(enc)
		require.NoError(t, err)
		if len(h) == 0 {
			require.Empty(t, dec)
		} else {
			require.Equal(t, h, dec)
		}
	}
}

func TestDecodeHeadersRejectsWhatWasNotEncoded(t *testing.T) {
	for _, s := range []string{"[", `["a"]`, `{"a":1}`, `{"a":null`, "nope"} {
		_, err := store.DecodeHeaders(s)
		require.Error(t, err, s)
	}
}

// Headers come back from the database as text; whatever is stored there, decoding must not
// panic, and what validates must survive a round trip.
func FuzzHeaders(f *testing.F) {
	f.Add(`{"a":"b"}`)
	f.Add(`{}`)
	f.Add(`{"":"x"}`)
	f.Add(`{"a":"\u0000"}`)
	f.Add(`{"outbox_id":"x"}`)
	f.Fuzz(func(t *testing.T, s string) {
		h, err := store.DecodeHeaders(s)
		if err != nil {
			return
		}
		m := store.Message{Topic: "t", Headers: h}
		if m.Validate(0) != nil {
			return
		}
		enc, err := store.EncodeHeaders(h)
		require.NoError(t, err)
		again, err := store.DecodeHeaders(enc)
		require.NoError(t, err)
		require.Equal(t, len(h), len(again))
		for k, v := range h {
			require.Equal(t, v, again[k])
		}
	})
}
