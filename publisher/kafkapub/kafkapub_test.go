package kafkapub_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// sarama starts one process-wide metrics goroutine that never ends, and an open circuit
// breaker sleeps for 10 s in a goroutine of its own, whatever becomes of its producer.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		goleak.IgnoreAnyFunction("github.com/eapache/go-resiliency/breaker.(*Breaker).timer"))
}

// End to end: messages written to a SQLite outbox arrive in Kafka (kfake over TCP), read back
// by franz-go, an independent client: each once, with its id and headers, keyed, and in write
// order per key.
func TestDispatcherToKafkaEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err := kafkatest.NewCluster()
	require.NoError(t, err)
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	require.NoError(t, err)
	defer db.Close()
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))

	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	require.NoError(t, err)
	defer pub.Close()
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(ctx)

	const n, keys = 600, 30
	ids := map[string]int{}
	for batch := range n / 100 {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		var msgs []store.Message
		for i := batch * 100; i < (batch+1)*100; i++ {
			m := store.Message{ID: store.NewID(), Topic: "payments", Key: fmt.Sprintf("payment-%d", i%keys),
				Payload: []byte(strconv.Itoa(i)), Headers: map[string]string{"event": "PaymentCompleted"}}
			if i%50 == 0 {
				m.Key = "" // some without a key
			}
			ids[m.ID] = i
			msgs = append(msgs, m)
		}
		require.NoError(t, st.Write(ctx, tx, msgs...))
		require.NoError(t, tx.Commit())
	}

	consumer, err := kafkatest.NewConsumer(brokers, "payments")
	require.NoError(t, err)
	defer consumer.Close()
	readCtx, readCancel := context.WithTimeout(ctx, time.Minute)
	defer readCancel()
	recs, err := consumer.ReadN(readCtx, n)
	require.NoError(t, err)
	require.Len(t, recs, n)

	seen := map[string]bool{}
	partitionOf := map[string]int32{}
	lastOfKey := map[string]int{}
	for _, r := range recs {
		id := r.Headers[publisher.MetadataID]
		require.Contains(t, ids, id)
		require.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
		require.Equal(t, id, r.Headers["_watermill_message_uuid"], "watermill's subscriber restores the id as UUID")
		require.Equal(t, "PaymentCompleted", r.Headers["event"])
		i, err := strconv.Atoi(string(r.Value))
		require.NoError(t, err)
		require.Equal(t, ids[id], i)
		if i%50 == 0 {
			require.Empty(t, r.Key)
			continue
		}
		require.Equal(t, r.Headers[publisher.MetadataKey], r.Key)
		if p, ok := partitionOf[r.Key]; ok {
			require.Equal(t, p, r.Partition, "one key, one partition")
		}
		partitionOf[r.Key] = r.Partition
		if prev, ok := lastOfKey[r.Key]; ok {
			require.Less(t, prev, i, "key %s out of order", r.Key)
		}
		lastOfKey[r.Key] = i
	}
	require.Eventually(t, func() bool {
		res, err := st.List(ctx, &store.ListParams{State: store.Delivered, Limit: n + 1})
		return err == nil && len(res.Messages) == n
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, int64(n), d.Stats().Published)
}

func TestNewNeedsBrokers(t *testing.T) {
	_, err := kafkapub.New(kafkapub.Config{})
	require.ErrorContains(t, err, "no brokers")
}

func ctxWithTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
