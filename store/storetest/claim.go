package storetest

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

func testLease(t *testing.T, h Harness) {
	want := write(t, h, msg("t", "a", "1"), msg("t", "", "2"))
	first := claim(t, h, 10, 300*time.Millisecond)
	require.Equal(t, want, ids(first))
	require.Empty(t, claim(t, h, 10, lease).Messages, "claimed messages are not claimed twice while the lease holds")

	var again *store.ClaimResult
	require.Eventually(t, func() bool {
		again = claim(t, h, 10, lease)
		return len(again.Messages) > 0
	}, 10*time.Second, 20*time.Millisecond, "an expired lease gives the messages back")
	require.Equal(t, want, ids(again))
	require.NotEqual(t, first.Token, again.Token)
}

func testExtendLease(t *testing.T, h Harness) {
	ext, ok := h.Store.(store.LeaseExtender)
	if !ok {
		t.Skip("the store does not implement store.LeaseExtender")
	}
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "k", "1"), msg("t", "k", "2"))
	res := claim(t, h, 1, 300*time.Millisecond)
	require.Equal(t, want[:1], ids(res))
	_, err := ext.ExtendLease(ctx, &store.ExtendLeaseParams{Token: res.Token})
	require.Error(t, err, "a lease must be positive")
	n, err := ext.ExtendLease(ctx, &store.ExtendLeaseParams{Token: res.Token, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "the claim holds one message")
	time.Sleep(500 * time.Millisecond) // past the first lease
	require.Empty(t, ids(claim(t, h, 10, lease)), "the extended claim still holds the message, and with it its key")
	n, err = ext.ExtendLease(ctx, &store.ExtendLeaseParams{Token: "no-such-claim", Lease: time.Minute})
	require.NoError(t, err)
	require.Zero(t, n, "an unknown token holds nothing")
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: want[:1]}))
	n, err = ext.ExtendLease(ctx, &store.ExtendLeaseParams{Token: res.Token, Lease: time.Minute})
	require.NoError(t, err)
	require.Zero(t, n, "a delivered message is no longer held")
	require.Equal(t, want[1:], ids(claim(t, h, 10, lease)))
}

func testMarkDelivered(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"), msg("t", "a", "2"))
	res := claim(t, h, 10, 200*time.Millisecond)
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}))
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{}), "no ids is a no-op")

	// Even after the lease would have expired, delivered messages are not claimed again.
	time.Sleep(300 * time.Millisecond) // let the lease lapse; nothing to wait for but the clock
	require.Empty(t, claim(t, h, 10, lease).Messages)
	list, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, list.Messages, 2)
	for i, m := range list.Messages {
		require.Equal(t, want[i], m.ID)
		require.Equal(t, store.Delivered, m.State)
		require.False(t, m.DeliveredAt.IsZero())
	}
}

// testMarkDeliveredDelete: with Delete, delivered messages leave the outbox; a message
// that is no longer pending (parked meanwhile) stays, as a mark would leave it.
func testMarkDeliveredDelete(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"), msg("t", "c", "3"))
	res := claim(t, h, 10, lease)
	require.Equal(t, want, ids(res))
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: res.Token, Failures: []store.Failure{{ID: want[2], Error: "bad", Park: true}}}))
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: want, Delete: true}))
	list, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, list.Messages, 1, "the two delivered messages are deleted")
	require.Equal(t, want[2], list.Messages[0].ID)
	require.Equal(t, store.Parked, list.Messages[0].State, "a parked message is not deleted by a late acknowledgement")
	require.Empty(t, claim(t, h, 10, lease).Messages)
}

func testFailRetry(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"))
	res := claim(t, h, 10, lease)
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: res.Token, Failures: []store.Failure{
		{ID: want[0], Error: "broker said no", RetryAfter: 400 * time.Millisecond},
	}}))
	require.Empty(t, claim(t, h, 10, lease).Messages, "not due before RetryAfter")

	list, err := h.Store.List(ctx, &store.ListParams{State: store.Pending})
	require.NoError(t, err)
	require.Len(t, list.Messages, 1)
	require.Equal(t, 1, list.Messages[0].Attempts)
	require.Equal(t, "broker said no", list.Messages[0].LastError)
	require.True(t, list.Messages[0].NextAttemptAt.After(time.Now().Add(-time.Second)), "next attempt time is persisted")

	var again *store.ClaimResult
	require.Eventually(t, func() bool {
		again = claim(t, h, 10, lease)
		return len(again.Messages) > 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, want, ids(again))
	require.Equal(t, 1, again.Messages[0].Attempts)
}

func testStaleToken(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"))
	stale := claim(t, h, 10, 100*time.Millisecond)
	var current *store.ClaimResult
	require.Eventually(t, func() bool {
		current = claim(t, h, 10, lease)
		return len(current.Messages) > 0
	}, 10*time.Second, 20*time.Millisecond)

	// The first claimer's lease lapsed and another claimed the message: the first claimer can
	// no longer fail, park or release it.
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: stale.Token, Failures: []store.Failure{{ID: want[0], Error: "late", Park: true}}}))
	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{Token: stale.Token, IDs: want}))
	list, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Equal(t, store.Pending, list.Messages[0].State)
	require.Zero(t, list.Messages[0].Attempts)
	require.Empty(t, claim(t, h, 10, lease).Messages, "still held by the current claim")

	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{Token: current.Token, IDs: want}))
	require.Equal(t, want, ids(claim(t, h, 10, lease)))
}

// testEmptyToken: no claim has an empty token, so calls with one change nothing, whatever
// a store keeps in the token of rows that no claim holds.
func testEmptyToken(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"))
	if ext, ok := h.Store.(store.LeaseExtender); ok {
		n, err := ext.ExtendLease(ctx, &store.ExtendLeaseParams{Lease: time.Minute})
		require.NoError(t, err)
		require.Zero(t, n, "an empty token extends nothing")
	}
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Failures: []store.Failure{{ID: want[0], Error: "no claim", Park: true}}}))
	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{All: true}))
	res := claim(t, h, 10, lease)
	require.Equal(t, want, ids(res), "both messages are claimable, neither failed nor held")
	for _, m := range res.Messages {
		require.Zero(t, m.Attempts)
	}
	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{IDs: want}), "an empty token releases nothing")
	require.Empty(t, claim(t, h, 10, lease).Messages, "the claim still holds both")
}

func testPark(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "poison"), msg("t", "a", "next"))
	res := claim(t, h, 1, lease)
	require.Equal(t, want[:1], ids(res))
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: res.Token, Failures: []store.Failure{
		{ID: want[0], Error: "cannot publish", Park: true},
	}}))
	require.Equal(t, want[1:], ids(claim(t, h, 10, lease)), "a parked message no longer holds back its key")

	parked, err := h.Store.List(ctx, &store.ListParams{State: store.Parked})
	require.NoError(t, err)
	require.Len(t, parked.Messages, 1)
	require.Equal(t, want[0], parked.Messages[0].ID)
	require.Equal(t, "cannot publish", parked.Messages[0].LastError)
	require.Equal(t, 1, parked.Messages[0].Attempts)
}

func testRelease(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"))
	res := claim(t, h, 10, lease)
	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{Token: res.Token, IDs: want[1:]}))
	again := claim(t, h, 10, lease)
	require.Equal(t, want[1:], ids(again), "released at once, the other still held")
	require.Zero(t, again.Messages[0].Attempts, "a release is not an attempt")
}

// A caller that names its claim's token can give back all it took without knowing what that
// was: the claim may have taken effect although Claim returned an error.
func testReleaseAll(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "a", "1"), msg("t", "b", "2"), msg("t", "c", "3"))
	const token = "a-token-of-the-callers"
	res, err := h.Store.Claim(ctx, &store.ClaimParams{Limit: 2, Lease: lease, Token: token})
	require.NoError(t, err)
	require.Equal(t, token, res.Token)
	require.Equal(t, want[:2], ids(res))
	other := claim(t, h, 10, lease)
	require.Equal(t, want[2:], ids(other))

	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{Token: token, All: true}))
	again := claim(t, h, 10, lease)
	require.Equal(t, want[:2], ids(again), "the token's messages are back; the other claim's are still held")
	require.Zero(t, again.Messages[0].Attempts, "a release is not an attempt")
	require.NoError(t, h.Store.Release(ctx, &store.ReleaseParams{Token: "no-such-claim", All: true}), "a token that took nothing releases nothing")
}

func testOrderPerKey(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	a := write(t, h, msg("t", "A", "a1"), msg("t", "B", "b1"), msg("t", "A", "a2"), msg("t", "A", "a3"), msg("t", "B", "b2"))
	a1, b1, a2, a3, b2 := a[0], a[1], a[2], a[3], a[4]

	// A claim that takes only the first message of key A holds back A's later messages.
	first := claim(t, h, 1, lease)
	require.Equal(t, []string{a1}, ids(first))
	second := claim(t, h, 10, lease)
	require.Equal(t, []string{b1, b2}, ids(second), "a2 and a3 wait while a1 is claimed")

	// a1 fails: its key waits for the retry, other keys do not.
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: first.Token, Failures: []store.Failure{{ID: a1, Error: "x", RetryAfter: 500 * time.Millisecond}}}))
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: []string{b1, b2}}))
	b3 := write(t, h, msg("t", "B", "b3"))
	res := claim(t, h, 10, lease)
	require.Equal(t, b3, ids(res), "key A waits behind its failed message")
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}))

	// When a1 is due again, A's messages come in write order, in one claim.
	require.Eventually(t, func() bool {
		res = claim(t, h, 10, lease)
		return len(res.Messages) > 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{a1, a2, a3}, ids(res))
}

// testReachPastHeld: a message behind a long run of held messages of another key is claimed
// within a few claims. A store may look at a window of the oldest messages only, so that a
// claim does not cost a look-up per message of a backlog that waits behind other claims; the
// window must then grow while it finds nothing.
func testReachPastHeld(t *testing.T, h Harness) {
	busy := make([]store.Message, 300)
	for i := range busy {
		busy[i] = msg("t", "busy", fmt.Sprint(i))
	}
	held := write(t, h, busy...)
	free := write(t, h, msg("t", "free", "f"))
	require.Equal(t, held[:1], ids(claim(t, h, 1, lease)), "the claim holds the busy key")
	var got []string
	for range 12 {
		if got = ids(claim(t, h, 1, lease)); len(got) > 0 {
			break
		}
	}
	require.Equal(t, free, got, "the message of the free key is claimed within 12 claims, the busy key's stay held")
}

// testReachPastDelivered: a message written after a long run of delivered (and deleted)
// messages is claimed within a few claims while an older message is still held. A store's
// window may be a range of positions from the oldest pending message, which the run of
// delivered messages leaves nearly empty; it must grow while it finds nothing.
func testReachPastDelivered(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	old := write(t, h, msg("t", "old", "held"))
	run := make([]store.Message, 1000)
	for i := range run {
		run[i] = msg("t", "", fmt.Sprint(i))
	}
	gone := write(t, h, run...)
	require.Equal(t, old, ids(claim(t, h, 1, lease)), "the oldest message stays claimed")
	res := claim(t, h, len(gone), lease)
	require.Equal(t, gone, ids(res))
	require.NoError(t, h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res), Delete: true}))
	later := write(t, h, msg("t", "later", "l"))
	var got []string
	for range 12 {
		if got = ids(claim(t, h, 1, lease)); len(got) > 0 {
			break
		}
	}
	require.Equal(t, later, got, "the later message is claimed within 12 claims")
}

func testNoKey(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	want := write(t, h, msg("t", "", "1"), msg("t", "", "2"))
	first := claim(t, h, 1, lease)
	require.Equal(t, want[:1], ids(first))
	require.NoError(t, h.Store.Fail(ctx, &store.FailParams{Token: first.Token, Failures: []store.Failure{{ID: want[0], Error: "x", RetryAfter: time.Hour}}}))
	require.Equal(t, want[1:], ids(claim(t, h, 10, lease)), "messages without a key do not wait for each other")
}

// Claimers run truly concurrently, each holding its messages for a moment as a publish would.
// A message must not be claimed while an earlier message of its key is held by another
// claim: so for consecutive messages i, j of a key, j is in i's claim (whose holder publishes
// them in order) or its claim returned after i's mark began.
func testConcurrentClaimers(t *testing.T, h Harness) {
	const (
		n        = 600
		keys     = 12
		claimers = 4
	)
	in := make([]store.Message, n)
	for i := range in {
		in[i] = msg("t", fmt.Sprintf("key-%d", i%keys), fmt.Sprint(i))
	}
	written := write(t, h, in...)

	var (
		clock        atomic.Int64 // orders the events below
		mu           sync.Mutex
		claimedAt    = map[string]int64{}  // id -> clock when its claim returned
		claimedBy    = map[string]string{} // id -> claim token
		markStartAt  = map[string]int64{}  // id -> clock when its mark began
		timesClaimed = map[string]int{}
		wg           sync.WaitGroup
		errs         = make(chan error, claimers)
	)
	ctx := ctxFor(t)
	for c := range claimers {
		wg.Go(func() {
			for empty := 0; empty < 20; {
				res, err := h.Store.Claim(ctx, &store.ClaimParams{Limit: 7, Lease: lease})
				if err != nil {
					errs <- err
					return
				}
				at := clock.Add(1)
				if len(res.Messages) == 0 {
					empty++
					time.Sleep(2 * time.Millisecond) // others may hold the rest; look again
					continue
				}
				empty = 0
				mu.Lock()
				for _, m := range res.Messages {
					claimedAt[m.ID] = at
					claimedBy[m.ID] = res.Token
					timesClaimed[m.ID]++
				}
				mu.Unlock()
				time.Sleep(time.Duration(c) * time.Millisecond) // "publishing"
				mu.Lock()
				at = clock.Add(1)
				for _, m := range res.Messages {
					markStartAt[m.ID] = at
				}
				mu.Unlock()
				if err := h.Store.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, timesClaimed, n, "every message claimed")
	for id, c := range timesClaimed {
		require.Equal(t, 1, c, "message %s claimed %d times", id, c)
	}
	for k := range keys {
		for i := k + keys; i < n; i += keys {
			prev, cur := written[i-keys], written[i]
			if claimedBy[prev] == claimedBy[cur] {
				continue
			}
			require.Greater(t, claimedAt[cur], markStartAt[prev],
				"key-%d: message %d was claimed while message %d was still held", k, i, i-keys)
		}
	}
}

func testClaimParams(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	_, err := h.Store.Claim(ctx, &store.ClaimParams{Limit: 0, Lease: lease})
	require.Error(t, err)
	_, err = h.Store.Claim(ctx, &store.ClaimParams{Limit: 1, Lease: 0})
	require.Error(t, err)
	_, err = h.Store.Claim(ctx, &store.ClaimParams{Limit: 1, Lease: lease, Token: strings.Repeat("t", 37)})
	require.ErrorContains(t, err, "Token must be at most 36 characters")
}
