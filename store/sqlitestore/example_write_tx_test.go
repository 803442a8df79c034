package sqlitestore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Write a domain row and its event in one bun transaction.
func Example_writeInTransaction() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)

	sqldb, err := sqlitestore.Open(filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer sqldb.Close()
	db := bun.NewDB(sqldb, sqlitedialect.New())
	outbox, err := sqlitestore.New(sqldb, sqlitestore.Config{})
	if err != nil {
		panic(err)
	}
	if err := outbox.Migrate(ctx); err != nil { // once, at start-up
		panic(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE payments (external_id TEXT PRIMARY KEY, amount TEXT)"); err != nil {
		panic(err)
	}

	err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO payments VALUES (?, ?)", "pay-1", "10.00"); err != nil {
			return err
		}
		return outbox.Write(ctx, tx, store.Message{
			Topic:   "payments",
			Key:     "pay-1",
			Payload: []byte(`{"externalId":"pay-1","amount":"10.00","paymentStatus":"Completed"}`),
		})
	})
	if err != nil {
		panic(err)
	}

	pending, err := outbox.List(ctx, &store.ListParams{State: store.Pending})
	if err != nil {
		panic(err)
	}
	for _, m := range pending.Messages {
		fmt.Println(m.Topic, m.Key, string(m.Payload))
	}
	// Output:
	// payments pay-1 {"externalId":"pay-1","amount":"10.00","paymentStatus":"Completed"}
}
