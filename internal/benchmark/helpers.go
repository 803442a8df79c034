package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/internal/kafkatest"
	"github.com/outboxgo/outbox/store/pgstore"
)

// payload256 is the payload of every benchmark message.
var payload256 = []byte(strings.Repeat("p", 256))

func warnLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// watermillLogger logs at level, which the forwarder cases raise while they stop it: its
// subscriber reports the cancelled poll of a normal shutdown as an error.
func watermillLogger(level *slog.LevelVar) watermill.LoggerAdapter {
	return watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// postgresDB is a fresh, empty Postgres database; drop removes it.
type postgresDB struct {
	name, dsn string
	// admin is connected to another database, so its queries do not count against this one.
	admin *sql.DB
	drop  func()
}

// newPostgres creates a database of its own and hands out its DSN, so that our stores,
// another library or another process can connect to it.
func newPostgres() (*postgresDB, error) {
	admin, err := pgstore.Open(dbtest.PostgresDSN())
	if err != nil {
		return nil, err
	}
	name := dbtest.Name("outbox_bench")
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		admin.Close()
		return nil, fmt.Errorf("create database (is Postgres running? make services): %w", err)
	}
	dsn := dbtest.PostgresDSN()
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		u.Path = "/" + name
		dsn = u.String()
	} else {
		dsn += " dbname=" + name
	}
	return &postgresDB{name: name, dsn: dsn, admin: admin, drop: func() {
		dbtest.DropPostgresLog(admin, name, "")
		admin.Exec("DROP DATABASE " + name + " WITH (FORCE)")
		admin.Close()
	}}, nil
}

// readAll polls consumer until it has read n distinct messages, told apart by the idHeader
// record header; it returns how many duplicates it saw.
func readAll(ctx context.Context, consumer *kafkatest.Consumer, n int, idHeader string) (dups int, err error) {
	seen := make(map[string]struct{}, n)
	for len(seen) < n {
		recs, err := consumer.Poll(ctx)
		if err != nil {
			return dups, err
		}
		if ctx.Err() != nil {
			return dups, fmt.Errorf("timed out with %d of %d", len(seen), n)
		}
		for _, r := range recs {
			id := r.Headers[idHeader]
			if _, ok := seen[id]; ok {
				dups++
			}
			seen[id] = struct{}{}
		}
	}
	return dups, nil
}

// percentile returns the p-th percentile (0-100) of sorted durations, as in the idle case.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)*p/100, len(sorted)-1)]
}

// kafkaBroker is a case's in-process Kafka broker, with a consumer of the bench topic that
// is independent of the producer under test.
type kafkaBroker struct {
	cluster  *kfake.Cluster
	addrs    []string
	consumer *kafkatest.Consumer
}

func startKafka() (*kafkaBroker, error) {
	cluster, err := kafkatest.NewCluster()
	if err != nil {
		return nil, err
	}
	consumer, err := kafkatest.NewConsumer(cluster.ListenAddrs(), topic)
	if err != nil {
		cluster.Close()
		return nil, err
	}
	return &kafkaBroker{cluster: cluster, addrs: cluster.ListenAddrs(), consumer: consumer}, nil
}

func (k *kafkaBroker) Close() {
	k.consumer.Close()
	k.cluster.Close()
}
