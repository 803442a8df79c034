package dispatcher_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
)

// The database server restarts while the application writes and a dispatcher publishes, in
// log and in polling mode: nothing is lost, keys stay in order, and publishing resumes by
// itself. Restarting a server disturbs every other test using it, so `make test` runs this
// one alone after the others, with OUTBOX_TEST_RESTART set to the command that restarts a
// server (`.ci/services restart postgres`).
func TestDatabaseRestartLosesNothing(t *testing.T) {
	restartCmd := os.Getenv("OUTBOX_TEST_RESTART")
	if restartCmd == "" {
		t.Skip("make test runs this alone, after the other tests, with OUTBOX_TEST_RESTART set")
	}
	const n = 3000
	for _, newDB := range serverDBs {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			brokers, db, st := shared.prepare(t)
			ddb, dst := shared.open(t, shared.dsn, shared.table)
			defer ddb.Close()
			pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
			require.NoError(t, err)
			defer pub.Close()
			d, err := dispatcher.New(dst, pub, shared.config(dispatcher.Config{BatchSize: 100, PollInterval: 100 * time.Millisecond,
				RetryInitial: 100 * time.Millisecond, RetryMax: time.Second, LogRetry: time.Second, Logger: quiet()}))
			require.NoError(t, err)
			require.NoError(t, d.Start(context.Background()))
			defer d.Stop(context.Background())

			written := make(chan error, 1)
			go func() { written <- writeThroughRestarts(db, st, n, 20, 10*time.Millisecond) }()
			time.Sleep(700 * time.Millisecond)
			args := strings.Fields(restartCmd)
			out, err := exec.Command(args[0], append(args[1:], "restart", shared.kind)...).CombinedOutput()
			require.NoError(t, err, string(out))
			restarted := time.Now()
			require.NoError(t, <-written)
			waitAllDelivered(t, st, n)
			dups, inversions := readBack(t, brokers, n)
			t.Logf("%s: server restarted; 0 lost, %d duplicates, %d inversions, all delivered %v after the restart, mode %s",
				shared.name, dups, inversions, time.Since(restarted).Round(time.Millisecond), d.Mode())
			require.Zero(t, inversions)
		})
	}
}

// writeThroughRestarts writes n messages like writeSteadily, retrying each transaction until
// it commits: the server may be down for a while. A retry that finds its messages already
// stored (the commit went through, its answer was lost) counts as written.
func writeThroughRestarts(db *sql.DB, st dbtest.Store, n, perTx int, pause time.Duration) error {
	ctx := context.Background()
	for start := 0; start < n; start += perTx {
		var msgs []store.Message
		for i := start; i < min(start+perTx, n); i++ {
			msgs = append(msgs, store.Message{ID: store.NewID(), Topic: instanceTopic, Key: fmt.Sprintf("k%d", i%instanceKeys), Payload: []byte(strconv.Itoa(i))})
		}
		deadline := time.Now().Add(time.Minute)
		for {
			err := writeTx(ctx, db, st, msgs)
			if err == nil || isDuplicate(err) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("write messages %d..: %w", start, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(pause)
	}
	return nil
}

func writeTx(ctx context.Context, db *sql.DB, st dbtest.Store, msgs []store.Message) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := st.Write(ctx, tx, msgs...); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func isDuplicate(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "duplicate key") || strings.Contains(msg, "duplicate entry")
}
