package dispatcher_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
)

// A batch whose publish takes several leases keeps its claim: the dispatcher extends the
// lease while it publishes, so a second dispatcher on the same outbox neither publishes the
// message again nor lets the next message of its key overtake it.
func TestSlowPublishKeepsItsClaim(t *testing.T) {
	for _, newDB := range []func(*testing.T) sharedDB{sharedSQLite, polling(sharedPostgres), polling(sharedMySQL)} {
		t.Run(newDB(t).name, func(t *testing.T) {
			shared := newDB(t)
			_, db, st := shared.prepare(t)
			const lease = 300 * time.Millisecond
			ctx := context.Background()
			require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/0")}))

			publishing := make(chan struct{})
			slow := outboxtest.NewPublisher()
			first := true
			slow.Fail = func(string, *message.Message) error {
				if first {
					first = false
					close(publishing)
					time.Sleep(5 * lease)
				}
				return nil
			}
			a := startDispatcher(t, st, slow, shared.config(dispatcher.Config{Lease: lease, Workers: 1, Logger: quiet()}))
			<-publishing
			require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/1")}))
			other := outboxtest.NewPublisher()
			b := startDispatcher(t, st, other, shared.config(dispatcher.Config{Lease: lease, Logger: quiet()}))

			waitNonePending(t, st, 30*time.Second)
			stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			require.NoError(t, a.Stop(stopCtx))
			require.NoError(t, b.Stop(stopCtx))
			var payloads []string
			for _, m := range append(slow.Messages(""), other.Messages("")...) {
				payloads = append(payloads, string(m.Payload))
			}
			require.ElementsMatch(t, []string{"k/0", "k/1"}, payloads, "each message published once")
			for _, m := range other.Messages("") {
				require.NotEqual(t, "k/0", string(m.Payload), "the other dispatcher took the slow batch's message")
			}
			require.Zero(t, a.Stats().Overrun, "the renewed lease never ran out")
		})
	}
}

// lostLease is a store whose claims hold nothing by the time their lease is extended, as
// when the lease ran out and another dispatcher claimed their messages.
type lostLease struct{ dbtest.Store }

func (lostLease) ExtendLease(context.Context, *store.ExtendLeaseParams) (int64, error) {
	return 0, nil
}

// An extension that finds none of the claim's messages still held does not keep the claim:
// the batch, recorded after its lease ran out, counts as overrun, and says so.
func TestALeaseExtendedOverNothingIsNotHeld(t *testing.T) {
	shared := sharedSQLite(t)
	_, db, st := shared.prepare(t)
	const lease = 300 * time.Millisecond
	ctx := context.Background()
	require.NoError(t, st.Write(ctx, db, store.Message{Topic: "orders", Key: "k", Payload: []byte("k/0")}))
	slow := outboxtest.NewPublisher()
	slow.Fail = func(string, *message.Message) error {
		time.Sleep(4 * lease)
		return nil
	}
	d := startDispatcher(t, lostLease{st}, slow, shared.config(dispatcher.Config{Lease: lease, Workers: 1, Logger: quiet()}))
	waitNonePending(t, st, 30*time.Second)
	require.Eventually(t, func() bool { return d.Stats().Overrun == 1 }, 10*time.Second, 10*time.Millisecond,
		"the batch was recorded after its lease ran out; overrun %d", d.Stats().Overrun)
}
