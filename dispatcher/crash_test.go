package dispatcher_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlstore"
)

func sharedSQLite(t *testing.T) sharedDB {
	return sharedDB{name: "sqlite", kind: "sqlite", dsn: filepath.Join(t.TempDir(), "outbox.db"), table: "outbox", open: openSQLite}
}

// A dispatcher process is killed (SIGKILL) at random moments, ten times, while the
// application keeps writing; each time a new one takes over. An independent client then reads
// Kafka: nothing is lost, no key's first deliveries are out of order, and the duplicates stay
// within one claimed batch per kill.
//
// make soak runs it longer: OUTBOX_SOAK_MESSAGES and OUTBOX_SOAK_KILLS scale it up.
func TestKilledDispatchersLoseNothing(t *testing.T) {
	n, kills := envInt("OUTBOX_SOAK_MESSAGES", 4000), envInt("OUTBOX_SOAK_KILLS", 10)
	const batch = 100
	for _, newDB := range append(allDBs, logOnlyPostgres) {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			rng := rand.New(rand.NewPCG(seed, seed))
			t.Logf("seed %d", seed)
			brokers, db, st := shared.prepare(t)

			written := make(chan error, 1)
			// Spread the writes over the kills (about 650 ms each).
			perTx := max(20, n/(kills*30))
			go func() { written <- writeSteadily(db, st, n, perTx, 20*time.Millisecond) }()
			var logs []string
			for range kills {
				cmd, log := startDispatcherProcess(t, shared, brokers, "killed", batch)
				logs = append(logs, log)
				// The fault itself: kill at a random moment of the dispatcher's work.
				time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
				require.NoError(t, cmd.Process.Kill())
				_ = cmd.Wait()
			}
			require.NoError(t, <-written)
			var dups, inversions int
			if shared.logOnly {
				// The table holds nothing to wait for: Kafka shows that every message arrived.
				final, log := startDispatcherProcess(t, shared, brokers, "killed", batch)
				logs = append(logs, log)
				dups, inversions = readBack(t, brokers, n)
				require.NoError(t, final.Process.Kill())
				_ = final.Wait()
			} else {
				final, log := startDispatcherProcess(t, shared, brokers, "empty", batch)
				logs = append(logs, log)
				waitAllDelivered(t, st, n)
				require.NoError(t, final.Wait(), "final dispatcher, log in %s", log)
				dups, inversions = readBack(t, brokers, n)
			}
			overrun := overrunIn(t, logs...)
			t.Logf("%s: %d messages, %d kills: 0 lost, %d duplicates (%.1f per kill), %d order inversions, %d overrun a lease",
				shared.name, n, kills, dups, float64(dups)/float64(kills), inversions, overrun)
			require.Zero(t, inversions, "first deliveries of a key out of write order")
			require.LessOrEqual(t, dups, kills*shared.crashBound(batch)+overrun, "more duplicates per kill than a crash may leave")
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// writeSteadily writes n messages over instanceKeys keys, perTx per transaction, pausing
// between transactions as an application would. Each payload starts with its write index.
func writeSteadily(db *sql.DB, st *sqlstore.Store, n, perTx int, pause time.Duration) error {
	ctx := context.Background()
	for start := 0; start < n; start += perTx {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var msgs []store.Message
		for i := start; i < min(start+perTx, n); i++ {
			msgs = append(msgs, store.Message{Topic: instanceTopic, Key: fmt.Sprintf("k%d", i%instanceKeys), Payload: []byte(strconv.Itoa(i))})
		}
		if err := st.Write(ctx, tx, msgs...); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		time.Sleep(pause)
	}
	return nil
}

// readBack reads the topic with an independent client until n distinct messages arrived,
// then a little longer for late duplicates. It fails the test if any message is missing, or
// if a consumer behind the idempotency middleware applies one other than exactly once, and
// returns the duplicates and the keys' first deliveries out of write order.
func readBack(t *testing.T, brokers []string, n int) (dups, inversions int) {
	t.Helper()
	consumer, err := kafkatest.NewConsumer(brokers, instanceTopic)
	require.NoError(t, err)
	defer consumer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seen := map[string]bool{}
	last := map[string]int{}
	var (
		settle     <-chan time.Time
		deliveries []delivery
	)
	for {
		if len(seen) == n && settle == nil {
			settle = time.After(500 * time.Millisecond)
		}
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		recs, err := consumer.Poll(pctx)
		pcancel()
		require.NoError(t, err)
		for _, r := range recs {
			id := r.Headers[publisher.MetadataID]
			deliveries = append(deliveries, delivery{id: id, payload: r.Value})
			if seen[id] {
				dups++
				continue
			}
			seen[id] = true
			i, err := strconv.Atoi(strings.Fields(string(r.Value))[0])
			require.NoError(t, err)
			if prev, ok := last[r.Key]; ok && prev > i {
				inversions++
			}
			last[r.Key] = i
		}
		select {
		case <-settle:
		case <-ctx.Done():
		default:
			continue
		}
		require.Len(t, seen, n, "every committed message arrived")
		requireAppliedOnce(t, deliveries)
		return dups, inversions
	}
}

// Three dispatcher processes share one database and one of them is killed mid-drain: the other
// two take over its messages when its leases expire, and nothing is lost.
func TestOneOfThreeDispatcherProcessesKilled(t *testing.T) {
	const batch = 100
	for _, newDB := range allDBs {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			brokers, db, st := shared.prepare(t)
			fill(t, db, st, instanceMessages)
			victim, victimLog := startDispatcherProcess(t, shared, brokers, "killed", batch)
			var survivors []*exec.Cmd
			var logs []string
			for range 2 {
				cmd, log := startDispatcherProcess(t, shared, brokers, "empty", batch)
				survivors = append(survivors, cmd)
				logs = append(logs, log)
			}
			require.Eventually(t, func() bool {
				s, err := st.Stats(context.Background())
				return err == nil && s.DeliveredLastMinute > instanceMessages/10
			}, time.Minute, 10*time.Millisecond)
			require.NoError(t, victim.Process.Kill()) // mid-drain
			_ = victim.Wait()
			waitAllDelivered(t, st, instanceMessages)
			for i, s := range survivors {
				require.NoError(t, s.Wait())
				out, _ := os.ReadFile(logs[i])
				for _, line := range strings.Split(string(out), "\n") {
					if strings.Contains(line, ": published ") {
						t.Logf("survivor %d: %s", i, strings.TrimSpace(line))
					}
				}
			}
			dups, inversions := readBack(t, brokers, instanceMessages)
			overrun := overrunIn(t, append(logs, victimLog)...)
			t.Logf("%s: one of three killed: 0 lost, %d duplicates, %d inversions, %d overrun a lease", shared.name, dups, inversions, overrun)
			require.Zero(t, inversions)
			// A loaded machine may stall a batch past its lease; its dispatcher says so.
			require.LessOrEqual(t, dups, shared.crashBound(batch)+overrun, "at most what the killed process had in flight")
		})
	}
}

// overrunIn logs what went wrong in the logs of dispatcher processes, and sums the messages
// they say they recorded after their lease ran out: other dispatchers may have published those
// too.
func overrunIn(t *testing.T, logs ...string) int {
	t.Helper()
	n := 0
	for _, path := range logs {
		out, err := os.ReadFile(path)
		require.NoError(t, err)
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.Contains(line, " WARN ") && !strings.Contains(line, " ERROR ") {
				continue
			}
			t.Logf("%s: %s", filepath.Base(path), strings.TrimSpace(line))
			if !strings.Contains(line, "after its lease ran out") {
				continue
			}
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "messages="); ok {
					m, err := strconv.Atoi(v)
					require.NoError(t, err)
					n += m
				}
			}
		}
	}
	return n
}
