package dispatcher_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/middleware/idempotency"
)

// delivery is one record as a consumer received it, duplicates included.
type delivery struct {
	id      string
	payload []byte
}

// requireAppliedOnce hands deliveries, in the order they arrived, to a handler behind the
// idempotency middleware that records an effect in its transaction, and checks that each
// message took effect exactly once. It hands over every delivery of each message delivered
// more than once, and, to keep the test fast under the race detector, one in 16 of the
// others.
func requireAppliedOnce(t *testing.T, all []delivery) {
	t.Helper()
	ctx := context.Background()
	times := map[string]int{}
	for _, d := range all {
		times[d.id]++
	}
	var deliveries []delivery
	sampled, n := map[string]bool{}, 0
	for i, d := range all {
		if _, ok := sampled[d.id]; !ok {
			sampled[d.id] = times[d.id] > 1 || i%16 == 0
			if sampled[d.id] {
				n++
			}
		}
		if sampled[d.id] {
			deliveries = append(deliveries, d)
		}
	}
	db := bun.NewDB(dbtest.SQLite(t), sqlitedialect.New())
	_, err := db.ExecContext(ctx, "CREATE TABLE effects (message_id TEXT NOT NULL, payload BLOB)")
	require.NoError(t, err)
	inbox, err := idempotency.New(db, idempotency.Config{Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, inbox.Migrate(ctx))
	handler := inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		tx, _ := idempotency.TxFromContext(msg.Context())
		_, err := tx.ExecContext(msg.Context(), "INSERT INTO effects VALUES (?, ?)", msg.UUID, []byte(msg.Payload))
		return nil, err
	})
	for _, d := range deliveries {
		_, err := handler(message.NewMessage(d.id, d.payload))
		require.NoError(t, err)
	}
	var effects, distinct int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*), count(DISTINCT message_id) FROM effects").Scan(&effects, &distinct))
	require.Equal(t, n, distinct, "every message took effect")
	require.Equal(t, n, effects, "no message took effect twice, of %d deliveries", len(deliveries))
}
