// Quickstart: the payments example, end to end, on one machine with no services.
//
// A SQLite file holds the payments and the outbox; an in-process Kafka broker (franz-go's
// kfake, on loopback) receives the events. Each payment and its PaymentEvent are written in
// one transaction; the dispatcher publishes the events through the Kafka publisher; a
// watermill Kafka subscriber reads them back. It prints progress, then a summary, and exits 0
// only if every event arrived.
//
//	go run ./examples/quickstart [-payments 2000] [-rate 500] [-db path] [-broker URL]
//
// -broker sends the events to a broker of yours instead, with this module's publisher for it
// and watermill's subscriber reading them back: nats://127.0.0.1:4222 (NATS JetStream, a
// stream of the run's own), redis://127.0.0.1:6379 (Redis Streams), amqp://guest:guest@127.0.0.1:5672/
// (RabbitMQ, a durable queue of the run's own) or kafka://host:port. The run's stream or
// queue is removed when it ends.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Payment is a domain row.
type Payment struct {
	bun.BaseModel `bun:"table:payments"`

	ID         int64     `bun:",pk,autoincrement"`
	ExternalID string    `bun:",notnull,unique"`
	Amount     string    `bun:",notnull"` // decimal as text, never float
	Status     string    `bun:",notnull"`
	CreatedAt  time.Time `bun:",notnull"`
}

// PaymentEvent is what downstream services learn about a payment.
type PaymentEvent struct {
	ExternalID    string `json:"externalId"`
	Amount        string `json:"amount"`
	PaymentStatus string `json:"paymentStatus"` // Completed, Pending or Failed
}

const topic = "payments"

func main() {
	payments := flag.Int("payments", 2000, "payments to write")
	rate := flag.Int("rate", 500, "payments written per second (0: as fast as possible)")
	dbPath := flag.String("db", "", "SQLite file (default: a new file in a temporary directory)")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	brokerURL := flag.String("broker", "", brokerFlag)
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *payments, *rate, *dbPath, *brokerURL); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n, rate int, dbPath, brokerURL string) error {
	if n <= 0 {
		return errors.New("-payments must be positive")
	}
	if rate < 0 {
		return errors.New("-rate must not be negative")
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// An in-process Kafka broker on loopback, or the one -broker names.
	b, err := openBroker(ctx, brokerURL, logger)
	if err != nil {
		return err
	}
	defer b.close()

	// The application's database: payments and the outbox, in one SQLite file.
	if dbPath == "" {
		dir, err := os.MkdirTemp("", "outbox-quickstart-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		dbPath = filepath.Join(dir, "payments.db")
	}
	sqldb, err := sqlitestore.Open(dbPath)
	if err != nil {
		return err
	}
	defer sqldb.Close()
	db := bun.NewDB(sqldb, sqlitedialect.New())
	if _, err := db.NewCreateTable().Model((*Payment)(nil)).IfNotExists().Exec(ctx); err != nil {
		return fmt.Errorf("create payments table: %w", err)
	}
	outbox, err := sqlitestore.New(sqldb, sqlitestore.Config{})
	if err != nil {
		return err
	}
	if err := outbox.Migrate(ctx); err != nil {
		return err
	}
	fmt.Printf("outbox quickstart: %d payments, SQLite %s, %s\n", n, dbPath, b.desc)

	// The dispatcher publishes what the outbox holds.
	d, err := dispatcher.New(outbox, b.pub, dispatcher.Config{Logger: logger})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Stop(stopCtx)
	}()

	// A consumer, as another service would run it.
	var (
		commits  sync.Map // event id -> commit time
		mu       sync.Mutex
		seen     = map[string]bool{}
		latency  []time.Duration
		dups     atomic.Int64
		consumed atomic.Int64
	)
	stopConsumer, err := consume(ctx, b, func(id string, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if seen[id] {
			dups.Add(1)
			return
		}
		seen[id] = true
		consumed.Add(1)
		if c, ok := commits.Load(id); ok {
			latency = append(latency, at.Sub(c.(time.Time)))
		}
	})
	if err != nil {
		return err
	}
	defer stopConsumer()

	// The application: each payment and its event in one transaction.
	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		writeErr <- writePayments(ctx, db, outbox, b.topic, n, rate, &written, &commits)
	}()

	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var werr error
	writing := true
	for consumed.Load() < int64(n) {
		select {
		case werr = <-writeErr:
			writing = false
			if werr != nil {
				return fmt.Errorf("writing payments: %w", werr)
			}
		case <-tick.C:
			fmt.Printf("  %5.1fs  written %5d  published %5d  consumed %5d\n", time.Since(start).Seconds(),
				written.Load(), d.Stats().Published, consumed.Load())
		case <-ctx.Done():
			return fmt.Errorf("timed out: written %d, published %d, consumed %d of %d", written.Load(), d.Stats().Published, consumed.Load(), n)
		}
	}
	if writing {
		if werr = <-writeErr; werr != nil {
			return fmt.Errorf("writing payments: %w", werr)
		}
	}
	elapsed := time.Since(start)

	// Every event is in the broker; the outbox agrees once the last marks land.
	var delivered int
	for ctx.Err() == nil {
		delivered, err = count(ctx, outbox, store.Delivered)
		if err != nil || delivered == n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rows int
	if err := db.NewSelect().Model((*Payment)(nil)).ColumnExpr("count(*)").Scan(ctx, &rows); err != nil {
		return err
	}

	mu.Lock()
	slices.Sort(latency)
	p50, p99 := percentile(latency, 50), percentile(latency, 99)
	mu.Unlock()
	stats := d.Stats()
	fmt.Println()
	fmt.Println("summary")
	fmt.Printf("  payments written    %d (rows in payments: %d)\n", written.Load(), rows)
	fmt.Printf("  events published    %d (marked delivered in the outbox: %d, failed attempts: %d, parked: %d)\n",
		stats.Published, delivered, stats.Failed, stats.Parked)
	fmt.Printf("  events consumed     %d unique\n", consumed.Load())
	fmt.Printf("  duplicates          %d\n", dups.Load())
	fmt.Printf("  commit-to-consume   p50 %v  p99 %v\n", p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond))
	fmt.Printf("  elapsed             %v\n", elapsed.Round(time.Millisecond))

	if consumed.Load() != int64(n) || int(written.Load()) != n || rows != n {
		return fmt.Errorf("FAIL: %d of %d events arrived", consumed.Load(), n)
	}
	fmt.Println("OK: every payment's event arrived")
	return nil
}

func writePayments(ctx context.Context, db *bun.DB, outbox *sqlitestore.Store, topic string, n, rate int, written *atomic.Int64, commits *sync.Map) error {
	var pace <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		pace = t.C
	}
	statuses := []string{"Completed", "Completed", "Completed", "Pending", "Failed"}
	for i := range n {
		if pace != nil {
			select {
			case <-pace:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		p := Payment{
			ExternalID: fmt.Sprintf("pay-%06d", i),
			Amount:     fmt.Sprintf("%d.%02d", 10+i%990, i%100),
			Status:     statuses[i%len(statuses)],
			CreatedAt:  time.Now().UTC(),
		}
		payload, err := json.Marshal(PaymentEvent{ExternalID: p.ExternalID, Amount: p.Amount, PaymentStatus: p.Status})
		if err != nil {
			return err
		}
		id := store.NewID()
		err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.NewInsert().Model(&p).Exec(ctx); err != nil {
				return err
			}
			return outbox.Write(ctx, tx, store.Message{
				ID:      id,
				Topic:   topic,
				Key:     p.ExternalID,
				Payload: payload,
				Headers: map[string]string{"event_type": "Payment" + p.Status, "content_type": "application/json"},
			})
		})
		if err != nil {
			return err
		}
		commits.Store(id, time.Now())
		written.Add(1)
	}
	return nil
}

// consume reads the broker's topic with its subscriber, calling got for each message. It
// returns a function that stops the consumer and waits for it.
func consume(ctx context.Context, b *broker, got func(id string, at time.Time)) (func(), error) {
	sub := b.sub
	subCtx, cancel := context.WithCancel(ctx)
	msgs, err := sub.Subscribe(subCtx, b.topic)
	if err != nil {
		cancel()
		sub.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range msgs {
			got(m.UUID, time.Now())
			m.Ack()
		}
	}()
	return func() {
		cancel()
		sub.Close()
		<-done
	}, nil
}

func count(ctx context.Context, st *sqlitestore.Store, state store.State) (int, error) {
	var n int
	err := st.DB().QueryRowContext(ctx, "SELECT count(*) FROM "+st.Table()+" WHERE state = ?", string(state)).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return n, err
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}
