package natspub_test

import (
	"log"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/natspub"
)

// A batch goes to JetStream as pipelined publishes whose acknowledgements are awaited
// together; a partial failure names the messages that failed (a *publisher.BatchError). The
// dispatcher takes the publisher as it is: dispatcher.New(outbox, pub, dispatcher.Config{}).
func ExampleNew() {
	pub, err := natspub.New(natspub.Config{URL: "nats://127.0.0.1:4222", AutoProvision: true})
	if err != nil {
		log.Fatal(err) // a bad config; a server that is down is no error here
	}
	defer pub.Close()
	m := message.NewMessage("0193a4e2-7c1d-7b3e-9f00-5a1b2c3d4e5f", []byte("paid"))
	m.Metadata.Set(publisher.MetadataKey, "order-42")
	if err := pub.PublishBatch("orders", []*message.Message{m}); err != nil {
		log.Fatal(err)
	}
}
