package dispatcher_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Start a dispatcher at start-up and stop it gracefully at shutdown. Any watermill publisher
// works; here an in-memory one stands in for Kafka.
func Example_startStop() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	db, err := sqlitestore.Open(filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	outbox, err := sqlitestore.New(db, sqlitestore.Config{})
	if err != nil {
		panic(err)
	}
	if err := outbox.Migrate(ctx); err != nil {
		panic(err)
	}

	pub := outboxtest.NewPublisher()
	d, err := dispatcher.New(outbox, pub, dispatcher.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	if err := d.Start(ctx); err != nil {
		panic(err)
	}

	// The application writes; the dispatcher wakes up and publishes.
	if err := outbox.Write(ctx, db, store.Message{Topic: "payments", Key: "pay-1", Payload: []byte("completed")}); err != nil {
		panic(err)
	}
	for deadline := time.Now().Add(10 * time.Second); len(pub.Messages("payments")) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}

	stopCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.Stop(stopCtx); err != nil {
		panic(err)
	}
	m := pub.Messages("payments")[0]
	fmt.Println(string(m.Payload), m.Metadata.Get(publisher.MetadataKey), m.UUID == m.Metadata.Get(publisher.MetadataID))
	// Output:
	// completed pay-1 true
}
