package idempotency_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/middleware/idempotency"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// A payment event delivered twice credits the account once. In a service, add the middleware
// to the router instead: router.AddMiddleware(inbox.Middleware).
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sqldb, err := sqlitestore.Open(filepath.Join(dir, "consumer.db"))
	if err != nil {
		panic(err)
	}
	db := bun.NewDB(sqldb, sqlitedialect.New())
	defer db.Close()

	inbox, err := idempotency.New(db, idempotency.Config{})
	if err != nil {
		panic(err)
	}
	if err := inbox.Migrate(ctx); err != nil { // once, at start-up
		panic(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE credits (payment_id TEXT, amount INTEGER)"); err != nil {
		panic(err)
	}

	handle := inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		tx, _ := idempotency.TxFromContext(msg.Context())
		// Written in the same transaction as the message id: both or neither.
		_, err := tx.ExecContext(msg.Context(), "INSERT INTO credits VALUES (?, ?)", msg.UUID, 10)
		return nil, err
	})
	for range 2 { // a redelivery carries the same id
		if _, err := handle(message.NewMessage("pay-1", []byte(`{"amount":10}`))); err != nil {
			panic(err)
		}
	}

	var credits, total int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*), SUM(amount) FROM credits").Scan(&credits, &total); err != nil {
		panic(err)
	}
	processed, err := inbox.Processed(ctx, "pay-1")
	if err != nil {
		panic(err)
	}
	fmt.Printf("credits: %d, total: %d, processed: %v\n", credits, total, processed)
	// Output: credits: 1, total: 10, processed: true
}
