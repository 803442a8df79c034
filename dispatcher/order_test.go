package dispatcher_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
)

// plainInsert writes one message as a program that does not use this library would, with
// the database's own clock for created_at (the statements of testdata/), in tx.
func plainInsert(ctx context.Context, kind string, tx *sql.Tx, table, id, topic, key, payload string) error {
	var q string
	switch kind {
	case "sqlite":
		q = "INSERT INTO " + table + " (id, topic, message_key, payload, headers, created_at) VALUES (?, ?, ?, CAST(? AS BLOB), '{}', CAST(unixepoch('subsec') * 1000000 AS INTEGER))"
	case "postgres":
		q = "INSERT INTO " + table + " (id, topic, message_key, payload, headers, created_at) VALUES ($1, $2, $3, convert_to($4, 'UTF8'), '{}', now())"
	default:
		q = "INSERT INTO " + table + " (id, topic, message_key, payload, headers, created_at) VALUES (?, ?, ?, ?, '{}', UTC_TIMESTAMP(6))"
	}
	_, err := tx.ExecContext(ctx, q, id, topic, key, payload)
	return err
}

// requireFirstDeliveriesInOrder checks that the first delivery of each message came after the first
// delivery of every earlier message of its key. Payloads are "key/index", indexes counting
// up from 0 per key in write order. A duplicate may arrive later; first deliveries count.
func requireFirstDeliveriesInOrder(t *testing.T, published []string, total int) {
	t.Helper()
	next := map[string]int{}
	seen := map[string]bool{}
	inversions := 0
	for _, p := range published {
		if seen[p] {
			continue
		}
		seen[p] = true
		key, idx, ok := strings.Cut(p, "/")
		require.True(t, ok, "payload %q", p)
		i, err := strconv.Atoi(idx)
		require.NoError(t, err)
		if i != next[key] {
			inversions++
			if inversions <= 5 {
				t.Errorf("key %s: message %d published when %d was next", key, i, next[key])
			}
		}
		next[key] = max(next[key], i+1)
	}
	require.Zero(t, inversions, "per-key inversions")
	require.Len(t, seen, total, "every message published")
}

// startRecording starts a dispatcher on st that publishes to a recording publisher, and
// returns a function that waits until n distinct messages were published, stops the
// dispatcher and returns the payloads in publish order.
func startRecording(t *testing.T, shared sharedDB, st dbtest.Store, cfg dispatcher.Config) func(n int) []string {
	t.Helper()
	pub := outboxtest.NewPublisher()
	cfg.Logger = quiet()
	d, err := dispatcher.New(st, pub, shared.config(cfg))
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, d.Stop(ctx))
		}
	}
	t.Cleanup(stop)
	return func(n int) []string {
		payloads := func() []string {
			var out []string
			for _, m := range pub.Messages("") {
				out = append(out, string(m.Payload))
			}
			return out
		}
		require.Eventually(t, func() bool {
			distinct := map[string]bool{}
			for _, p := range payloads() {
				distinct[p] = true
			}
			return len(distinct) >= n
		}, 3*time.Minute, 10*time.Millisecond, "all %d messages published", n)
		stop()
		return payloads()
	}
}

// Two kinds of writers at once, as an application and another program would: each
// transaction writes two consecutive messages of one key, one through Write and one with
// plain SQL, in either order. Several writers run concurrently, each with keys of its own,
// while a dispatcher runs with default settings. No message may be published before an
// earlier message of its key, whichever path wrote either. On a log-only outbox, Write's
// messages reach the dispatcher only through the log, the plain-SQL ones through the table
// too.
func TestMixedWritersKeepKeyOrder(t *testing.T) {
	for _, newDB := range append(allDBs, logOnlyPostgres) {
		t.Run(newDB(t).name, func(t *testing.T) {
			shared := newDB(t)
			_, db, st := shared.prepare(t)
			const (
				writers = 4
				keys    = 200
				perKey  = 16 // messages per key, two per transaction
			)
			collect := startRecording(t, shared, st, dispatcher.Config{})
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := range writers {
				wg.Go(func() {
					for round := 0; round < perKey/2; round++ {
						for k := w; k < keys; k += writers {
							key := fmt.Sprintf("k%03d", k)
							if err := retryBusy(func() error {
								return writeMixed(ctx, shared.kind, db, st, key, 2*round, (k+round)%2 == 0)
							}); err != nil {
								errs <- err
								return
							}
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			requireFirstDeliveriesInOrder(t, collect(keys*perKey), keys*perKey)
		})
	}
}

// retryBusy runs a writer's transaction again when SQLite answers SQLITE_BUSY, as an
// application on SQLite must: four writers and a dispatcher contend for its one write lock,
// and on a loaded machine a writer can wait past the 5 s busy timeout. The transaction was
// rolled back, so nothing of it was written.
func retryBusy(write func() error) error {
	for {
		err := write()
		var se interface{ Code() int }
		if errors.As(err, &se) && se.Code()&0xff == 5 { // SQLITE_BUSY
			continue
		}
		return err
	}
}

// writeMixed writes messages first and first+1 of key in one transaction: through Write
// then plain SQL, or the other way round when sqlFirst.
func writeMixed(ctx context.Context, kind string, db *sql.DB, st dbtest.Store, key string, first int, sqlFirst bool) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	steps := []func(payload string) error{
		func(payload string) error {
			return st.Write(ctx, tx, store.Message{Topic: "orders", Key: key, Payload: []byte(payload)})
		},
		func(payload string) error {
			return plainInsert(ctx, kind, tx, st.Table(), store.NewID(), "orders", key, payload)
		},
	}
	if sqlFirst {
		steps[0], steps[1] = steps[1], steps[0]
	}
	for i, step := range steps {
		if err := step(fmt.Sprintf("%s/%d", key, first+i)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// A program whose clock runs ahead writes a message with its own times (created_at and
// next_attempt_at two seconds in the future, as a writer that sets them would); then the
// next message of the key is written with the database's clock. The first must still be
// published first: no clock decides whether a message that never failed is due.
func TestWriterClockAheadKeepsKeyOrder(t *testing.T) {
	for _, newDB := range serverDBs {
		t.Run(newDB(t).name, func(t *testing.T) {
			shared := newDB(t)
			_, db, st := shared.prepare(t)
			ahead := "now() + interval '2 seconds'"
			placeholders := "$1, $2, $3, convert_to($4, 'UTF8')"
			if shared.kind != "postgres" {
				ahead = "UTC_TIMESTAMP(6) + INTERVAL 2 SECOND"
				placeholders = "?, ?, ?, ?"
			}
			ctx := context.Background()
			const keys = 20
			for k := range keys {
				key := fmt.Sprintf("k%02d", k)
				tx, err := db.BeginTx(ctx, nil)
				require.NoError(t, err)
				_, err = tx.ExecContext(ctx, "INSERT INTO "+st.Table()+" (id, topic, message_key, payload, headers, created_at, next_attempt_at) VALUES ("+
					placeholders+", '{}', "+ahead+", "+ahead+")", store.NewID(), "orders", key, key+"/0")
				require.NoError(t, err)
				require.NoError(t, tx.Commit())
				tx, err = db.BeginTx(ctx, nil)
				require.NoError(t, err)
				require.NoError(t, st.Write(ctx, tx, store.Message{Topic: "orders", Key: key, Payload: []byte(key + "/1")}))
				require.NoError(t, tx.Commit())
			}
			collect := startRecording(t, shared, st, dispatcher.Config{})
			requireFirstDeliveriesInOrder(t, collect(2*keys), 2*keys)
		})
	}
}
