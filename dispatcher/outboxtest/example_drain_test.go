package outboxtest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// In a unit test: check what a transaction wrote, then what would be published.
func Example() {
	t := &testing.T{} // in a real test, the test's own *testing.T
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	db, _ := sqlitestore.Open(filepath.Join(dir, "app.db"))
	defer db.Close()
	outbox, _ := sqlitestore.New(db, sqlitestore.Config{})
	_ = outbox.Migrate(ctx)

	tx, _ := db.BeginTx(ctx, nil)
	_ = outbox.Write(ctx, tx, store.Message{Topic: "payments", Key: "pay-1", Payload: []byte("completed")})
	outboxtest.RequireWritten(t, outbox, tx, outboxtest.Want{Topic: "payments", Key: "pay-1"})
	_ = tx.Commit()

	pub := outboxtest.NewPublisher()
	n := outboxtest.Drain(t, outbox, pub)
	fmt.Println(n, string(pub.Messages("payments")[0].Payload))
	// Output:
	// 1 completed
}
