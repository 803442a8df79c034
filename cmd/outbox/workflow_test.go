package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// An operator's round on each database: migrate, see the outbox with messages pending,
// parked and delivered, list the parked ones, requeue them, purge the delivered ones.
func TestOperatorWorkflow(t *testing.T) {
	for _, db := range setups {
		t.Run(db.name, func(t *testing.T) {
			t.Parallel()
			f := db.setup(t)
			ctx := context.Background()

			require.Contains(t, f.ok(t, "migrate"), "migrated table")
			require.Contains(t, f.ok(t, "migrate"), "migrated table", "migrate is idempotent")

			before := time.Now()
			ids := f.write(t,
				store.Message{Topic: "orders", Key: "a", Payload: []byte("1")},
				store.Message{Topic: "orders", Key: "b", Payload: []byte("2")},
				store.Message{Topic: "payments", Key: "c", Payload: []byte("3")},
				store.Message{Topic: "payments", Key: "d", Payload: []byte("4")},
				store.Message{Topic: "payments", Key: "e", Payload: []byte("5")},
			)
			const lastError = "broker said no:\n\tpartition offline"
			f.settle(t, ids[:2], ids[2:4], lastError)

			// status, as text and as JSON: the same figures, the store's.
			st := f.status(t)
			require.Equal(t, db.name, st.Database)
			require.EqualValues(t, 1, st.Pending)
			require.EqualValues(t, 2, st.Parked)
			require.Equal(t, []parkedKey{{Topic: "orders", Key: "a", Parked: 1}, {Topic: "orders", Key: "b", Parked: 1}}, st.ParkedKeys)
			require.EqualValues(t, 2, st.DeliveredLastMinute)
			require.WithinRange(t, st.OldestPending, before.Add(-time.Second), time.Now())
			require.Positive(t, st.OldestPendingAgeSeconds)
			require.Less(t, st.OldestPendingAgeSeconds, time.Since(before).Seconds()+1)
			require.Equal(t, modeNone, st.Log.Mode, "no dispatcher reads the log")
			require.NotEmpty(t, st.Log.Reason)

			text := fields(t, f.ok(t, "status"))
			require.Equal(t, db.name, text["database"])
			require.Equal(t, strconv.FormatInt(st.Pending, 10), text["pending"])
			require.Equal(t, strconv.FormatInt(st.Parked, 10), text["parked"])
			require.Equal(t, "orders/a (1), orders/b (1)", text["parked keys"])
			require.Equal(t, strconv.FormatInt(st.DeliveredLastMinute, 10), text["delivered last minute"])
			require.Contains(t, text["lag"], "oldest pending written "+st.OldestPending.UTC().Format(time.RFC3339))
			require.Equal(t, modeNone, text["log mode"])
			require.Equal(t, st.Log.Reason, text["why not log"])

			// parked lists the parked messages with their error, in a table...
			out := f.ok(t, "parked")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			require.Len(t, lines, 3, out)
			require.Regexp(t, `^ID\s+TOPIC\s+KEY\s+ATTEMPTS\s+WRITTEN AT\s+LAST ERROR$`, lines[0])
			for i, id := range ids[:2] {
				require.Regexp(t, `^`+id+`\s+orders\s+`+[]string{"a", "b"}[i]+`\s+1\s+\S+\s+broker said no:  partition offline$`, lines[i+1],
					"one line per message, the error's newline and tab made spaces")
			}
			// ... and as JSON, the error as stored.
			var parked parkedReport
			f.json(t, &parked, "parked")
			require.Len(t, parked.Messages, 2)
			require.False(t, parked.Truncated)
			for i, m := range parked.Messages {
				require.Equal(t, ids[i], m.ID)
				require.Equal(t, "orders", m.Topic)
				require.Equal(t, 1, m.Attempts)
				require.Equal(t, lastError, m.LastError)
				require.WithinRange(t, m.WrittenAt, before.Add(-time.Second), time.Now())
			}
			f.json(t, &parked, "parked", "--limit", "1")
			require.Len(t, parked.Messages, 1)
			require.True(t, parked.Truncated)
			require.Contains(t, f.ok(t, "parked", "--limit", "1"), "raise --limit")
			f.json(t, &parked, "parked", "--topic", "payments")
			require.Empty(t, parked.Messages)
			require.Equal(t, "no parked messages\n", f.ok(t, "parked", "--topic", "payments"))

			// requeue by topic: they are pending again.
			require.Equal(t, "requeued 0 parked messages: none matched\n",
				f.ok(t, "requeue", "--topic", "payments"))
			require.Contains(t, f.ok(t, "requeue", "--topic", "orders"), "requeued 2 parked messages")
			st = f.status(t)
			require.EqualValues(t, 3, st.Pending)
			require.Zero(t, st.Parked)
			f.json(t, &parked, "parked")
			require.Empty(t, parked.Messages)

			// purge deletes the delivered messages older than the duration, and only those.
			require.Equal(t, "deleted 0 delivered messages older than 1d\n", f.ok(t, "purge", "--older-than", "1d"))
			// The deliveries age past 1ms in a moment; purge until both went, within a bound.
			deleted := 0
			for deadline := time.Now().Add(10 * time.Second); deleted < 2 && time.Now().Before(deadline); {
				var r struct{ Deleted int }
				f.json(t, &r, "purge", "--older-than", "1ms")
				if deleted += r.Deleted; deleted < 2 {
					time.Sleep(10 * time.Millisecond)
				}
			}
			require.Equal(t, 2, deleted)
			left, err := f.st.List(ctx, &store.ListParams{})
			require.NoError(t, err)
			require.Len(t, left.Messages, 3)
			for _, m := range left.Messages {
				require.Equal(t, store.Pending, m.State)
			}
			require.Zero(t, f.status(t).DeliveredLastMinute)
		})
	}
}

// requeue selects by id, or by topic and key together.
func TestRequeueSelections(t *testing.T) {
	t.Parallel()
	f := sqliteFixture(t)
	f.ok(t, "migrate")
	ids := f.write(t,
		store.Message{Topic: "orders", Key: "a"},
		store.Message{Topic: "orders", Key: "b"},
		store.Message{Topic: "payments", Key: "a"},
		store.Message{Topic: "payments", Key: "b"},
	)
	f.settle(t, ids, nil, "no")

	var r struct{ Requeued int }
	f.json(t, &r, "requeue", "--id", ids[0], "--id", ids[3])
	require.Equal(t, 2, r.Requeued)
	f.json(t, &r, "requeue", "--topic", "orders", "--key", "b")
	require.Equal(t, 1, r.Requeued)
	f.json(t, &r, "requeue", "--all")
	require.Equal(t, 1, r.Requeued)
	require.Zero(t, f.status(t).Parked)
}

// An id given to requeue --id that names no parked message fails the command: a typo, or a
// message that is not where the operator thought. A topic or key that matches nothing does
// not.
func TestRequeueByIDFailsForIDsNotParked(t *testing.T) {
	t.Parallel()
	f := sqliteFixture(t)
	f.ok(t, "migrate")
	ids := f.write(t,
		store.Message{Topic: "orders", Key: "a"},
		store.Message{Topic: "orders", Key: "b"},
		store.Message{Topic: "orders", Key: "c"},
		store.Message{Topic: "orders", Key: "d"},
	)
	parked, pending, delivered := ids[:2], ids[2], ids[3]
	f.settle(t, parked, []string{delivered}, "no")

	for _, tc := range []struct {
		name   string
		ids    []string
		stdout string
		stderr string
	}{
		{"no such id", []string{"0190f3a2-7b1c-7000-8000-0000000000ff"}, "", "the id given with --id named no parked message"},
		{"pending", []string{pending}, "", "the id given with --id named no parked message"},
		{"delivered", []string{delivered}, "", "the id given with --id named no parked message"},
		{"one of two", []string{parked[0], "typo"}, "requeued 1 parked message: it is pending again", "1 of the 2 ids given with --id named no parked message"},
		{"none of two", []string{pending, delivered}, "", "none of the 2 ids given with --id named a parked message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"requeue"}
			for _, id := range tc.ids {
				args = append(args, "--id", id)
			}
			res := f.run(t, args...)
			require.Equal(t, exitFailure, res.code, res.stderr)
			require.Equal(t, tc.stdout == "", res.stdout == "", res.stdout)
			require.Contains(t, res.stdout, tc.stdout)
			require.Contains(t, res.stderr, tc.stderr)
			require.Contains(t, res.stderr, "outbox parked")
			require.Equal(t, 1, strings.Count(res.stderr, "\n"), "one line:\n%s", res.stderr)
		})
	}

	// JSON says how many, besides the exit code.
	res := f.run(t, "requeue", "--id", pending, "--json")
	require.Equal(t, exitFailure, res.code, res.stderr)
	require.JSONEq(t, `{"requeued": 0, "ids_not_parked": 1}`, res.stdout)

	// The same id twice is one message; what --id names is requeued.
	var r struct{ Requeued int }
	f.json(t, &r, "requeue", "--id", parked[1], "--id", parked[1])
	require.Equal(t, 1, r.Requeued)
	require.Zero(t, f.status(t).Parked)

	// A topic or a key that matches nothing is no failure.
	require.Equal(t, "requeued 0 parked messages: none matched\n", f.ok(t, "requeue", "--topic", "payments"))
	require.Equal(t, "requeued 0 parked messages: none matched\n", f.ok(t, "requeue", "--key", "a"))
}

// migrate --print shows the SQL of every step for the database and table, without a server.
func TestMigratePrintNeedsNoConnection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dsn, table string
		want       []string
	}{
		{"postgres://nobody:secret@127.0.0.1:1/none", "app.events", []string{`CREATE TABLE IF NOT EXISTS "app"."events"`, "-- 0001_create_outbox", "replication slot app_events"}},
		{"mysql://nobody:secret@tcp(127.0.0.1:1)/none", "", []string{"CREATE TABLE IF NOT EXISTS `outbox`", "ENGINE = InnoDB", "outbox_log_position"}},
		{"sqlite://" + t.TempDir() + "/none/outbox.db", "", []string{`CREATE TABLE IF NOT EXISTS "outbox"`}},
	} {
		args := []string{"--dsn", tc.dsn, "migrate", "--print"}
		if tc.table != "" {
			args = append(args, "--table", tc.table)
		}
		r := outbox(t, args...)
		require.Zero(t, r.code, r.stderr)
		for _, w := range tc.want {
			require.Contains(t, r.stdout, w)
		}

		var doc struct {
			Database   string
			Migrations []migrationStep
		}
		r = outbox(t, append(args, "--json")...)
		require.Zero(t, r.code, r.stderr)
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &doc))
		require.NotEmpty(t, doc.Migrations)
		require.Equal(t, 1, doc.Migrations[0].Version)
		require.Contains(t, doc.Migrations[0].SQL, "CREATE TABLE")
	}
}
