package pgstore_test

import (
	"context"
	"log"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

// Open the database, apply the schema (and, with wal_level=logical, the publication and
// replication slot the log reader reads through), write a message in a transaction, and
// start a dispatcher, which reads the WAL where it can and polls otherwise.
func Example() {
	ctx := context.Background()
	db, err := pgstore.Open("postgres://app@127.0.0.1:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	outbox, err := pgstore.New(db, pgstore.Config{Table: "app.outbox"})
	if err != nil {
		log.Fatal(err)
	}
	if err := outbox.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "UPDATE app.orders SET state = 'paid' WHERE id = $1", 42); err != nil {
		log.Fatal(err)
	}
	if err := outbox.Write(ctx, tx, store.Message{Topic: "orders", Key: "42", Payload: []byte(`{"state":"paid"}`)}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	pub, err := kafkapub.New(kafkapub.Config{Brokers: []string{"127.0.0.1:9092"}})
	if err != nil {
		log.Fatal(err)
	}
	d, err := dispatcher.New(outbox, pub, dispatcher.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Run(ctx); err != nil { // until ctx ends; or Start and Stop
		log.Fatal(err)
	}
}

// What the log reader needs on the server, and how far it is behind, as the operator
// command's status shows it.
func ExampleInspectLog() {
	ctx := context.Background()
	db, err := pgstore.Open("postgres://app@127.0.0.1:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	s, err := pgstore.InspectLog(ctx, db, "app.outbox")
	if err != nil {
		log.Fatal(err)
	}
	if s.Problem != "" {
		log.Printf("dispatchers poll: %s", s.Problem)
	}
	log.Printf("slot %s: reader connected %v, %d bytes behind", s.Slot, s.Active, s.LagBytes)
}
