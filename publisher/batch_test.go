package publisher_test

import (
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/publisher"
)

// A message acknowledged after an earlier message of its key failed is reported failed; the
// other keys' messages are not.
func TestBatchReportsAKeyFailedFromItsFirstFailure(t *testing.T) {
	var msgs []*message.Message
	for i, key := range []string{"A", "B", "A", "A", "", "B"} {
		m := message.NewMessage(string(rune('a'+i)), nil)
		if key != "" {
			m.Metadata.Set(publisher.MetadataKey, key)
		}
		msgs = append(msgs, m)
	}
	b := publisher.NewBatchOutcome(msgs)
	require.NoError(t, b.Err())
	b.Fail(2, errors.New("refused"))
	var be *publisher.BatchError
	require.ErrorAs(t, b.Err(), &be)
	require.Len(t, be.Failed, 2)
	require.EqualError(t, be.Failed["c"], "refused")
	require.ErrorContains(t, be.Failed["d"], `an earlier message of key "A" failed`)
	require.True(t, b.Held(3), "a later message of a failed key is not sent")
	require.False(t, b.Held(1))
	require.False(t, b.Held(4), "no key, no order")
}
