package dispatcher_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/publisher/kafkapub"
)

// On each database, the broker goes away for 10 s (every request's connection is closed) while the application
// keeps writing. Writes never depend on the broker; once it is back the dispatcher resumes by
// itself within its retry cap, and nothing is lost or reordered.
func TestBrokerOutageLosesNothingAndResumes(t *testing.T) {
	const (
		n        = 2000
		outage   = 10 * time.Second
		retryCap = time.Second
	)
	for _, newDB := range allDBs {
		shared := newDB(t)
		t.Run(shared.name, func(t *testing.T) {
			_, db, st := shared.prepare(t)
			cluster, err := kafkatest.NewCluster() // a broker of its own, to take down
			require.NoError(t, err)
			defer cluster.Close()
			var down atomic.Bool
			cluster.Control(func(kmsg.Request) (kmsg.Response, error, bool) {
				cluster.KeepControl()
				if down.Load() {
					return nil, errors.New("broker down"), true
				}
				return nil, nil, false
			})
			brokers := cluster.ListenAddrs()
			cfg := kafkapub.SaramaConfig()
			cfg.Net.DialTimeout, cfg.Net.ReadTimeout, cfg.Net.WriteTimeout = time.Second, 2*time.Second, 2*time.Second
			pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers, Sarama: cfg})
			require.NoError(t, err)
			defer pub.Close()
			d, err := dispatcher.New(st, pub, shared.config(dispatcher.Config{RetryInitial: 100 * time.Millisecond, RetryMax: retryCap, MaxAttempts: 1 << 20, Logger: quiet()}))
			require.NoError(t, err)
			require.NoError(t, d.Start(context.Background()))
			defer d.Stop(context.Background())

			written := make(chan error, 1)
			go func() { written <- writeSteadily(db, st, n, 10, 30*time.Millisecond) }()
			require.Eventually(t, func() bool { return d.Stats().Published > 100 }, 30*time.Second, 5*time.Millisecond)

			down.Store(true)
			time.Sleep(outage) // the outage itself
			require.Positive(t, d.Stats().Failed, "publishing failed while the broker was down")
			before := d.Stats().Published
			down.Store(false)
			back := time.Now()
			require.Eventually(t, func() bool { return d.Stats().Published > before }, 30*time.Second, 5*time.Millisecond)
			resumed := time.Since(back)
			require.NoError(t, <-written, "the application's writes never waited for the broker")
			waitAllDelivered(t, st, n)

			dups, inversions := readBack(t, brokers, n)
			t.Logf("%s: outage %v: resumed %v after the broker came back; %d failed attempts, %d duplicates, 0 lost",
				shared.name, outage, resumed.Round(time.Millisecond), d.Stats().Failed, dups)
			require.Zero(t, inversions)
			// The broker refuses whole requests while it is down: what it acknowledged was
			// stored, and what it refused is published once, later.
			require.Zero(t, dups, "duplicates")
			require.Less(t, resumed, 10*time.Second, "resumes by itself, within a few retry caps")
			require.Zero(t, d.Stats().Parked)
		})
	}
}
