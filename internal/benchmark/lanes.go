package main

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
)

// laneCount is how many slices of the keyspace the lanes prototype cuts the outbox into: a
// power of two, as laneOf masks the hash.
const laneCount = 64

// laneOf is the lane of a row of the outbox table (Postgres): a hash of its key, or of its
// id when it has none, so that a key's messages share a lane.
var laneOf = "(hashtext(CASE WHEN message_key = '' THEN id ELSE message_key END) & " + strconv.Itoa(laneCount-1) + ")"

// lanesCase measures a prototype of the claim model the speed issue proposes, not the
// library: each worker drains one lane at a time in one transaction that takes the lane's
// advisory lock (so that a key's messages go out in order whatever the workers), reads the
// lane's oldest pending messages of the outbox table through an index on the lane, sends
// them with one sarama SendMessages, marks them delivered (or deletes them) and commits. A
// crashed worker's transaction ends with its connection, so nothing waits for a lease. It
// retries nothing and parks nothing. Batches are the dispatcher's (-batch). Postgres only; the
// case "lanes", not run by default.
func lanesCase(name string, n, batch int, del bool, rawRate float64) error {
	if name != "postgres" {
		return fmt.Errorf("the lanes prototype is written for Postgres")
	}
	db, err := newDatabase(name)
	if db != nil && db.cleanup != nil {
		defer db.cleanup()
	}
	if err != nil {
		return err
	}
	if err := fill(db.st, n); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	t := db.st.Table()
	if _, err := db.st.DB().Exec("CREATE INDEX outbox_lane ON " + t + " (" + laneOf + ", seq) WHERE state = 'pending'"); err != nil {
		return err
	}
	if _, err := db.st.DB().Exec("ANALYZE " + t); err != nil {
		return err
	}
	record := "UPDATE " + t + " SET state = 'delivered', delivered_at = statement_timestamp() WHERE seq = ANY($1)"
	if del {
		record = "DELETE FROM " + t + " WHERE seq = ANY($1)"
	}
	sel := "SELECT seq, id, message_key, payload FROM " + t + " WHERE " + laneOf + " = $1 AND state = 'pending' ORDER BY seq LIMIT " + strconv.Itoa(batch) + " FOR UPDATE"
	next := make([]int, rawLoopWorkers) // each worker's next lane
	for w := range next {
		next[w] = w * laneCount / len(next)
	}
	elapsed, err := drainBy(n, rawLoopWorkers, func(ctx context.Context, producer sarama.SyncProducer, w int) (int, error) {
		// A turn tries the lanes in order from where this worker last was, until one has
		// messages: an empty outbox costs a statement per lane.
		for range laneCount {
			lane := next[w]
			sent, err := laneOnce(ctx, db.st.DB(), producer, lane, sel, record)
			if err != nil || sent > 0 {
				return sent, err
			}
			next[w] = (lane + 1) % laneCount
		}
		return 0, nil
	})
	if err != nil {
		return err
	}
	rate := float64(n) / elapsed.Seconds()
	label := "postgres-lanes-drain"
	if del {
		label = "postgres-lanes-delete-drain"
	}
	fmt.Printf("case=%s n=%d rate=%.0f vs_rawloop=%.2f workers=%d lanes=%d batch=%d elapsed=%v\n", label, n, rate, rate/rawRate, rawLoopWorkers, laneCount, batch, elapsed.Round(time.Millisecond))
	return nil
}

// laneOnce drains up to one batch of a lane, if no other worker holds it, and returns how
// many messages it sent.
func laneOnce(ctx context.Context, db *sql.DB, producer sarama.SyncProducer, lane int, sel, record string) (int, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var locked bool
	if err := tx.QueryRowContext(ctx, "SELECT pg_try_advisory_xact_lock(4242, $1), set_config('synchronous_commit', 'off', true) IS NOT NULL", lane).Scan(&locked, new(bool)); err != nil {
		return 0, err
	}
	if !locked {
		return 0, nil
	}
	rows, err := tx.QueryContext(ctx, sel, lane)
	if err != nil {
		return 0, err
	}
	seqs, err := sendRows(rows, producer)
	if err != nil || len(seqs) == 0 {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, record, seqs); err != nil {
		return 0, fmt.Errorf("record lane %d: %w", lane, err)
	}
	return len(seqs), tx.Commit()
}
