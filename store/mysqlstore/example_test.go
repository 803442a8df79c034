package mysqlstore_test

import (
	"context"
	"log"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/mysqlstore"
)

// Open the database (a go-sql-driver DSN; the binlog reader reuses its settings), apply the
// schema, write a message in a transaction, and start a dispatcher, which reads the binlog
// where it can and polls otherwise.
func Example() {
	ctx := context.Background()
	db, err := mysqlstore.Open("app:secret@tcp(127.0.0.1:3306)/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	outbox, err := mysqlstore.New(db, mysqlstore.Config{})
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
	if _, err := tx.ExecContext(ctx, "UPDATE orders SET state = 'paid' WHERE id = ?", 42); err != nil {
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

// What the binlog reader needs on the server, and where it stands.
func ExampleInspectLog() {
	ctx := context.Background()
	db, err := mysqlstore.Open("app:secret@tcp(127.0.0.1:3306)/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	s, err := mysqlstore.InspectLog(ctx, db, "")
	if err != nil {
		log.Fatal(err)
	}
	if s.Problem != "" {
		log.Printf("dispatchers poll: %s", s.Problem)
	}
	log.Printf("reader connection %d, %d bytes behind", s.ReaderConnection, s.LagBytes)
}
