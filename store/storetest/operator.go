package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

func operator(t *testing.T, h Harness) store.Operator {
	op, ok := h.Store.(store.Operator)
	if !ok {
		t.Skip("store does not implement store.Operator")
	}
	return op
}

// park claims the messages with ids and parks them.
func park(t *testing.T, h Harness, ids ...string) {
	t.Helper()
	res := claim(t, h, 1000, lease)
	var failures []store.Failure
	var release []string
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, m := range res.Messages {
		if want[m.ID] {
			failures = append(failures, store.Failure{ID: m.ID, Error: "broken", Park: true})
		} else {
			release = append(release, m.ID)
		}
	}
	require.Len(t, failures, len(ids))
	require.NoError(t, h.Store.Fail(ctxFor(t), &store.FailParams{Token: res.Token, Failures: failures}))
	require.NoError(t, h.Store.Release(ctxFor(t), &store.ReleaseParams{Token: res.Token, IDs: release}))
}

func testOperatorStats(t *testing.T, h Harness) {
	op := operator(t, h)
	ctx := ctxFor(t)
	empty, err := op.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, store.Stats{}, *empty)

	before := time.Now().Add(-time.Second)
	written := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"), msg("t", "c", "3"), msg("t", "d", "4"))
	park(t, h, written[0])
	res := claim(t, h, 1, lease)
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}))

	st, err := op.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, st.Pending)
	require.EqualValues(t, 1, st.Parked)
	require.EqualValues(t, 1, st.DeliveredLastMinute)
	require.WithinRange(t, st.OldestPending, before, time.Now().Add(time.Second))
	require.Equal(t, []store.ParkedKey{{Topic: "t", Key: "a", Parked: 1}}, st.ParkedKeys)

	// Parked keys come oldest first, counted per topic and key; messages without a key and
	// keys past MaxParkedKeys are left out.
	var more []store.Message
	for i := range store.MaxParkedKeys + 2 {
		more = append(more, msg("u", fmt.Sprintf("k%02d", i), "x"), msg("u", "", "no key"))
	}
	more = append(more, msg("t", "a", "again"))
	park(t, h, write(t, h, more...)...)
	st, err = op.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2*(store.MaxParkedKeys+2)+2, st.Parked)
	require.Len(t, st.ParkedKeys, store.MaxParkedKeys)
	require.Equal(t, store.ParkedKey{Topic: "t", Key: "a", Parked: 2}, st.ParkedKeys[0])
	require.Equal(t, store.ParkedKey{Topic: "u", Key: "k00", Parked: 1}, st.ParkedKeys[1])
	require.Equal(t, "k08", st.ParkedKeys[store.MaxParkedKeys-1].Key)
}

func testOperatorRequeue(t *testing.T, h Harness) {
	op := operator(t, h)
	ctx := ctxFor(t)
	written := write(t, h, msg("orders", "a", "1"), msg("orders", "b", "2"), msg("payments", "a", "3"), msg("payments", "c", "4"), msg("payments", "d", "5"))
	park(t, h, written[0], written[1], written[2], written[3])

	_, err := op.Requeue(ctx, &store.RequeueParams{})
	require.ErrorIs(t, err, store.ErrNoSelection)

	n, err := op.Requeue(ctx, &store.RequeueParams{IDs: []string{written[1], written[4]}})
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "only parked messages are requeued")
	n, err = op.Requeue(ctx, &store.RequeueParams{Topic: "payments", Key: "a"})
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	res := claim(t, h, 10, lease)
	require.ElementsMatch(t, []string{written[1], written[2], written[4]}, ids(res), "requeued messages are due at once")
	for _, m := range res.Messages {
		require.Zero(t, m.Attempts)
	}
	n, err = op.Requeue(ctx, &store.RequeueParams{All: true})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	st, err := op.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Parked)
}

func testOperatorPurge(t *testing.T, h Harness) {
	op := operator(t, h)
	ctx := ctxFor(t)
	written := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"), msg("t", "c", "3"), msg("t", "d", "4"), msg("t", "e", "5"), msg("t", "f", "6"), msg("t", "g", "7"))
	park(t, h, written[6])
	res := claim(t, h, 5, lease)
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}))

	_, err := op.Purge(ctx, &store.PurgeParams{})
	require.Error(t, err, "OlderThan is required")
	n, err := op.Purge(ctx, &store.PurgeParams{OlderThan: time.Hour})
	require.NoError(t, err)
	require.Zero(t, n, "nothing delivered an hour ago")

	time.Sleep(20 * time.Millisecond) // let the deliveries age past OlderThan below
	n, err = op.Purge(ctx, &store.PurgeParams{OlderThan: 10 * time.Millisecond, BatchSize: 2})
	require.NoError(t, err)
	require.EqualValues(t, 5, n, "all delivered messages, two per statement")
	all, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, all.Messages, 2, "pending and parked messages stay")
}
