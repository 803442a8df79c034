package redispub_test

import (
	"log"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/redispub"
)

// A batch goes to the stream named after the topic as one pipeline of XADDs; a partial
// failure names the messages that failed (a *publisher.BatchError). The dispatcher takes the
// publisher as it is: dispatcher.New(outbox, pub, dispatcher.Config{}).
func ExampleNew() {
	pub, err := redispub.New(redispub.Config{URL: "redis://127.0.0.1:6379/0"})
	if err != nil {
		log.Fatal(err) // a bad config; New does not connect
	}
	defer pub.Close()
	m := message.NewMessage("0193a4e2-7c1d-7b3e-9f00-5a1b2c3d4e5f", []byte("paid"))
	m.Metadata.Set(publisher.MetadataKey, "order-42")
	if err := pub.PublishBatch("orders", []*message.Message{m}); err != nil {
		log.Fatal(err)
	}
}
