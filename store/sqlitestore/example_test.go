package sqlitestore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Open a database file, apply the schema, write a message in the same transaction as a
// domain row, and deliver it (here to an in-memory publisher; in an application, to Kafka
// through publisher/kafkapub, with Start and Stop).
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "outbox-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sqlitestore.Open("sqlite://" + filepath.Join(dir, "shop.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	outbox, err := sqlitestore.New(db, sqlitestore.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := outbox.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE orders (id INTEGER PRIMARY KEY, state TEXT)"); err != nil {
		log.Fatal(err)
	}

	err = inTx(ctx, db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id, state) VALUES (42, 'paid')"); err != nil {
			return err
		}
		return outbox.Write(ctx, tx, store.Message{Topic: "orders", Key: "42", Payload: []byte(`{"state":"paid"}`)})
	})
	if err != nil {
		log.Fatal(err)
	}

	pub := outboxtest.NewPublisher()
	d, err := dispatcher.New(outbox, pub, dispatcher.Config{})
	if err != nil {
		log.Fatal(err)
	}
	n, err := d.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published:", n)
	for _, m := range pub.Messages("orders") {
		fmt.Println(string(m.Payload))
	}
	// Output:
	// published: 1
	// {"state":"paid"}
}

func inTx(ctx context.Context, db *sql.DB, f func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit()
}
