// Package storetest is the conformance suite for outbox stores. A store is correct when
// [Run] passes against it: every store in this module runs it against its real database, and
// so should a store of your own.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) storetest.Harness {
//			db := openFreshDatabase(t)
//			st, err := mystore.New(db)
//			require.NoError(t, err)
//			require.NoError(t, st.Migrate(context.Background()))
//			return storetest.Harness{Store: st, DB: db}
//		})
//	}
package storetest

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// Harness is one fresh, migrated, empty outbox.
type Harness struct {
	// Store under test.
	Store store.Store
	// DB is the database that holds the store's table; the suite writes through transactions
	// on it.
	DB *sql.DB
}

// Run runs every conformance test against stores made by newHarness, which is called once per
// subtest and must return an empty outbox of its own.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"WriteThenClaimRoundTrips", testRoundTrip},
		{"WriteIsPartOfTheCallersTransaction", testWriteRollback},
		{"WriteRejectsBadInputAndKeepsTxUsable", testBadInput},
		{"LargestPayloadRoundTrips", testLargestPayload},
		{"WriteManyInOneCall", testWriteMany},
		{"WriteRefusesATakenIDAndKeepsTxUsable", testDuplicateID},
		{"ClaimHoldsMessagesUntilLeaseExpires", testLease},
		{"ExtendLeaseKeepsAClaimPastItsFirstLease", testExtendLease},
		{"MarkDeliveredIsFinal", testMarkDelivered},
		{"FailDelaysRetryAndRecordsError", testFailRetry},
		{"FailWithStaleTokenIsIgnored", testStaleToken},
		{"ParkLetsTheKeyMoveOn", testPark},
		{"ReleaseMakesDueAtOnce", testRelease},
		{"ReleaseAllGivesBackWhatAClaimWithItsOwnTokenTook", testReleaseAll},
		{"OrderPerKey", testOrderPerKey},
		{"MessagesWithoutKeyAreIndependent", testNoKey},
		{"ConcurrentClaimersNeverShareOrReorder", testConcurrentClaimers},
		{"ListFilters", testList},
		{"CheckPasses", testCheck},
		{"NotifierHearsWrites", testNotifier},
		{"ClaimRejectsBadParams", testClaimParams},
		{"OperatorStats", testOperatorStats},
		{"OperatorRequeue", testOperatorRequeue},
		{"OperatorPurge", testOperatorPurge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newHarness(t))
		})
	}
}

const lease = time.Minute

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// write stores msgs in one committed transaction and returns their ids.
func write(t *testing.T, h Harness, msgs ...store.Message) []string {
	t.Helper()
	ctx := ctxFor(t)
	for i := range msgs {
		if msgs[i].ID == "" {
			msgs[i].ID = store.NewID()
		}
	}
	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, h.Store.Write(ctx, tx, msgs...))
	require.NoError(t, tx.Commit())
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

func claim(t *testing.T, h Harness, limit int, lease time.Duration) *store.ClaimResult {
	t.Helper()
	res, err := h.Store.Claim(ctxFor(t), &store.ClaimParams{Limit: limit, Lease: lease})
	require.NoError(t, err)
	return res
}

func ids(res *store.ClaimResult) []string {
	out := make([]string, len(res.Messages))
	for i, m := range res.Messages {
		out[i] = m.ID
	}
	return out
}

func msg(topic, key, payload string) store.Message {
	return store.Message{Topic: topic, Key: key, Payload: []byte(payload)}
}

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

func testList(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	write(t, h, msg("orders", "o-1", "1"), msg("payments", "p-1", "2"), msg("payments", "p-2", "3"))
	all, err := h.Store.List(ctx, &store.ListParams{})
	require.NoError(t, err)
	require.Len(t, all.Messages, 3)
	byTopic, err := h.Store.List(ctx, &store.ListParams{Topic: "payments"})
	require.NoError(t, err)
	require.Len(t, byTopic.Messages, 2)
	byKey, err := h.Store.List(ctx, &store.ListParams{Topic: "payments", Key: "p-2"})
	require.NoError(t, err)
	require.Len(t, byKey.Messages, 1)
	require.Equal(t, "3", string(byKey.Messages[0].Payload))
	limited, err := h.Store.List(ctx, &store.ListParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, limited.Messages, 1)
	require.Equal(t, "orders", limited.Messages[0].Topic, "oldest first")

	// Inside a transaction, List sees what the transaction wrote before it commits.
	tx, err := h.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	require.NoError(t, h.Store.Write(ctx, tx, msg("uncommitted", "", "4")))
	inTx, err := h.Store.List(ctx, &store.ListParams{DB: tx, Topic: "uncommitted"})
	require.NoError(t, err)
	require.Len(t, inTx.Messages, 1)
	require.Equal(t, store.Pending, inTx.Messages[0].State)
}

func testCheck(t *testing.T, h Harness) {
	require.NoError(t, h.Store.Check(ctxFor(t)))
	require.NotEmpty(t, h.Store.Capabilities().Name)
}

func testNotifier(t *testing.T, h Harness) {
	n, ok := h.Store.(store.Notifier)
	if !ok {
		t.Skip("store does not implement store.Notifier")
	}
	signals, cancel := n.Subscribe()
	defer cancel()
	write(t, h, msg("t", "", "wake"))
	select {
	case <-signals:
	case <-time.After(10 * time.Second):
		t.Fatal("no signal after a write")
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
