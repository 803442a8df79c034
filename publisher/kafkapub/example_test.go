package kafkapub_test

import (
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
)

// A batch goes to Kafka in a few produce requests; a partial failure names the messages that
// failed (a *publisher.BatchError), so that only those are retried. Here an in-process
// broker stands in for Kafka.
func ExampleNew() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	pub, err := kafkapub.New(kafkapub.Config{Brokers: cluster.ListenAddrs()})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	var batch []*message.Message
	for i := range 3 {
		m := message.NewMessage(fmt.Sprintf("id-%d", i), []byte("paid"))
		m.Metadata.Set(publisher.MetadataKey, "order-42") // the record key: one partition
		batch = append(batch, m)
	}
	if err := pub.PublishBatch("orders", batch); err != nil {
		log.Fatal(err)
	}
	fmt.Println("published", len(batch))
	// Output:
	// published 3
}
