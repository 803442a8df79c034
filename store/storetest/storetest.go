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
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// Harness is one fresh, migrated, empty outbox.
type Harness struct {
	// Store under test.
	Store store.Engine
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
		{"WriteIDsTellsTheIDsItStored", testWriteIDs},
		{"WriteRefusesATakenIDAndKeepsTxUsable", testDuplicateID},
		{"ClaimHoldsMessagesUntilLeaseExpires", testLease},
		{"ExtendLeaseKeepsAClaimPastItsFirstLease", testExtendLease},
		{"MarkDeliveredIsFinal", testMarkDelivered},
		{"MarkDeliveredCanDelete", testMarkDeliveredDelete},
		{"FailDelaysRetryAndRecordsError", testFailRetry},
		{"FailWithStaleTokenIsIgnored", testStaleToken},
		{"AnEmptyTokenHoldsNothing", testEmptyToken},
		{"ParkLetsTheKeyMoveOn", testPark},
		{"ReleaseMakesDueAtOnce", testRelease},
		{"ReleaseAllGivesBackWhatAClaimWithItsOwnTokenTook", testReleaseAll},
		{"OrderPerKey", testOrderPerKey},
		{"MessagesWithoutKeyAreIndependent", testNoKey},
		{"ClaimReachesPastALongRunOfHeldMessages", testReachPastHeld},
		{"ClaimReachesPastALongRunOfDeliveredMessages", testReachPastDelivered},
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
	require.NoError(t, writeTx(ctx, h, msgs))
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// writeTx writes msgs in one committed transaction.
func writeTx(ctx context.Context, h Harness, msgs []store.Message) error {
	tx, err := h.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := h.Store.Write(ctx, tx, msgs...); err != nil {
		return err
	}
	return tx.Commit()
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
