package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/middleware/idempotency"
)

// The same message published several times through a real router runs its effect once.
func TestRouterProcessesRedeliveriesOnce(t *testing.T) {
	forEachDB(t, func(t *testing.T, b backend) {
		f := setup(t, b, idempotency.Config{})
		logger := watermill.NopLogger{}
		// Publish returns once the handler acked the message, duplicates included.
		pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
		require.NoError(t, err)
		router.AddMiddleware(f.inbox.Middleware)
		credit := f.credit(10)
		router.AddConsumerHandler("credit", "payments", pubsub, func(msg *message.Message) error {
			_, err := credit(msg)
			return err
		})

		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- router.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			require.NoError(t, router.Close())
			select {
			case err := <-runErr:
				require.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Error("router did not stop")
			}
			require.NoError(t, pubsub.Close())
		})
		select {
		case <-router.Running():
		case <-time.After(30 * time.Second):
			t.Fatal("router did not start")
		}

		publish := func(id string) {
			done := make(chan error, 1)
			go func() { done <- pubsub.Publish("payments", message.NewMessage(id, []byte(`{"amount":10}`))) }()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Fatalf("message %s was not acked", id) // Cleanup closes the pub/sub, which ends Publish
			}
		}
		for range 5 {
			publish("pay-1")
		}
		publish("pay-2")
		publish("pay-1")

		for _, id := range []string{"pay-1", "pay-2"} {
			rows, total := f.ledgerRows(t, id)
			require.EqualValues(t, 1, rows, id)
			require.EqualValues(t, 10, total, id)
		}
		require.EqualValues(t, 2, f.calls.Load())
	})
}
