package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
)

// rawLoopWorkers is how many hand loops run at once on a server database, as a user would
// run a couple of instances; SQLite runs one writer at a time, so one loop.
const rawLoopWorkers = 2

// rawLoopCase drains a backlog the way a hand-written loop does, the reference for every
// drain case: in one transaction, lock a batch of rows (skipping locked ones), send it with
// one sarama SendMessages, delete it, commit. Its table is the plain one a user would make
// (a sequence, an id, a key, a payload; no index but the primary key), not the outbox's. It
// keeps no per-key order, retries nothing and parks nothing. It returns the rate, for the
// vs_rawloop field of the drain lines.
func rawLoopCase(name string, n int) (float64, error) {
	db, err := newDatabase(name)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return 0, err
	}
	table := "rawloop_outbox"
	if err := fillRawLoop(db.st.DB(), name, table, n); err != nil {
		return 0, fmt.Errorf("fill: %w", err)
	}
	workers, lock, in := rawLoopWorkers, " FOR UPDATE SKIP LOCKED", func(seqs []int64) (string, []any) {
		return "seq = ANY($1)", []any{seqs}
	}
	switch name {
	case "sqlite":
		workers, lock = 1, "" // the transaction takes the write lock at BEGIN (_txlock=immediate)
		in = inList
	case "mariadb", "mysql":
		in = inList
	}
	sel := "SELECT seq, id, message_key, payload FROM " + table + " ORDER BY seq LIMIT 1000" + lock
	elapsed, err := drainBy(n, workers, func(ctx context.Context, producer sarama.SyncProducer, _ int) (int, error) {
		sent, err := rawLoopOnce(ctx, db.st.DB(), producer, sel, table, in)
		var myErr *mysql.MySQLError
		if errors.As(err, &myErr) && myErr.Number == 1213 {
			return -1, nil // a deadlock between the two loops' deletes: the server says to retry
		}
		return sent, err
	})
	if err != nil {
		return 0, err
	}
	rate := float64(n) / elapsed.Seconds()
	fmt.Printf("case=%s-rawloop-drain n=%d rate=%.0f workers=%d elapsed=%v\n", name, n, rate, workers, elapsed.Round(time.Millisecond))
	return rate, nil
}

// drainBy runs workers loops of once, each with a sarama producer of its own and its index,
// until n distinct messages are read back from the broker, and returns how long that took.
// A turn that sends nothing waits 5 ms before the next; one that returns -1 goes again at once.
func drainBy(n, workers int, once func(ctx context.Context, producer sarama.SyncProducer, worker int) (int, error)) (time.Duration, error) {
	kb, err := startKafka()
	if err != nil {
		return 0, err
	}
	defer kb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var (
		wg   sync.WaitGroup
		errs = make(chan error, workers)
		done = make(chan struct{})
	)
	for w := range workers {
		producer, err := sarama.NewSyncProducer(kb.addrs, kafkapub.SaramaConfig())
		if err != nil {
			return 0, err
		}
		defer producer.Close()
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				sent, err := once(ctx, producer, w)
				if err != nil {
					errs <- err
					return
				}
				if sent == 0 {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	seen := make(map[string]bool, n)
	var readErr error
	for len(seen) < n && readErr == nil {
		select {
		case err := <-errs:
			readErr = err
			continue
		default:
		}
		recs, err := kb.consumer.Poll(ctx)
		if err != nil || ctx.Err() != nil {
			readErr = fmt.Errorf("read %d of %d: %v", len(seen), n, err)
		}
		for _, r := range recs {
			seen[r.Headers[publisher.MetadataID]] = true
		}
	}
	elapsed := time.Since(start)
	close(done)
	wg.Wait()
	return elapsed, readErr
}

// rawLoopOnce is one turn of the hand loop, and returns how many messages it sent.
func rawLoopOnce(ctx context.Context, db *sql.DB, producer sarama.SyncProducer, sel, table string, in func([]int64) (string, []any)) (int, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, sel)
	if err != nil {
		return 0, err
	}
	seqs, err := sendRows(rows, producer)
	if err != nil || len(seqs) == 0 {
		return 0, err
	}
	cond, args := in(seqs)
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+table+" WHERE "+cond, args...); err != nil {
		return 0, err
	}
	return len(seqs), tx.Commit()
}

// sendRows sends the messages of rows (seq, id, key, payload) with one SendMessages, and
// returns their seqs.
func sendRows(rows *sql.Rows, producer sarama.SyncProducer) ([]int64, error) {
	defer rows.Close()
	var (
		seqs []int64
		msgs []*sarama.ProducerMessage
	)
	for rows.Next() {
		var (
			seq     int64
			id, key string
			payload []byte
		)
		if err := rows.Scan(&seq, &id, &key, &payload); err != nil {
			return nil, err
		}
		seqs = append(seqs, seq)
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(payload),
			Headers: []sarama.RecordHeader{{Key: []byte(publisher.MetadataID), Value: []byte(id)}}})
	}
	if err := rows.Err(); err != nil || len(msgs) == 0 {
		return nil, err
	}
	return seqs, producer.SendMessages(msgs)
}

// fillRawLoop creates the hand loop's table and writes n messages to it as fill does to the
// outbox: 256-byte payloads over the same keys, 1,000 to a transaction.
func fillRawLoop(db *sql.DB, name, table string, n int) error {
	ddl := "CREATE TABLE " + table + " (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL, message_key TEXT NOT NULL, payload BYTEA NOT NULL)"
	mark := func(i int) string { return fmt.Sprintf("$%d", i+1) }
	switch name {
	case "sqlite":
		ddl = "CREATE TABLE " + table + " (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, message_key TEXT NOT NULL, payload BLOB NOT NULL)"
		mark = func(int) string { return "?" }
	case "mariadb", "mysql":
		ddl = "CREATE TABLE " + table + " (seq BIGINT AUTO_INCREMENT PRIMARY KEY, id VARCHAR(64) NOT NULL, message_key VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL) ENGINE = InnoDB"
		mark = func(int) string { return "?" }
	}
	if _, err := db.Exec(ddl); err != nil {
		return err
	}
	payload := []byte(strings.Repeat("p", 256))
	for start := 0; start < n; start += 1000 {
		var (
			values []string
			args   []any
		)
		for i := start; i < min(start+1000, n); i++ {
			values = append(values, "("+mark(len(args))+", "+mark(len(args)+1)+", "+mark(len(args)+2)+")")
			args = append(args, store.NewID(), fmt.Sprintf("key-%d", i%keys), payload)
		}
		if _, err := db.Exec("INSERT INTO "+table+" (id, message_key, payload) VALUES "+strings.Join(values, ", "), args...); err != nil {
			return err
		}
	}
	return nil
}

// inList is the condition that seq is one of seqs, as a literal list.
func inList(seqs []int64) (string, []any) {
	parts := make([]string, len(seqs))
	for i, s := range seqs {
		parts[i] = fmt.Sprint(s)
	}
	return "seq IN (" + strings.Join(parts, ",") + ")", nil
}
