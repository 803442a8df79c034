package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store/pgstore"
)

// failoverCase measures how soon the messages of a polling dispatcher that was killed are
// published by another. A child process (this program with -child-drain -child-poll) claims a
// batch of a Postgres backlog and hangs publishing it to a broker that accepts connections
// and never answers. A dispatcher starts in this process, with the real broker; then the
// child is killed (SIGKILL), and the time until its claimed messages arrive is the failover
// time. Both run with default settings. The backlog is one default batch, which the
// child claims whole.
func failoverCase() error {
	n := dispatcher.DefaultBatchSize
	pg, db, st, err := fillPostgres(n)
	if err != nil {
		return err
	}
	defer pg.drop()
	defer db.Close()

	silent, err := listenSilently()
	if err != nil {
		return err
	}
	defer silent.Close()

	child, err := startChild(pg.dsn, []string{silent.Addr().String()}, "-child-poll")
	if err != nil {
		return err
	}
	defer child.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	claimed, err := awaitClaimed(ctx, db, st.Table())
	if err != nil {
		return err
	}

	kb, err := startKafka()
	if err != nil {
		return err
	}
	defer kb.Close()
	brokers, consumer := kb.addrs, kb.consumer
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: warnLogger(), PollOnly: true})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop(context.Background())
	killedAt := time.Now()
	child.kill()
	if _, err := readAll(ctx, consumer, n, publisher.MetadataID); err != nil {
		return err
	}
	took := time.Since(killedAt)
	fmt.Printf("case=postgres-poll-failover claimed=%d failover=%.2fs lease=%v\n", claimed, took.Seconds(), dispatcher.DefaultLease)
	return nil
}

// listenSilently returns a listener on loopback that accepts connections and never answers
// them: a broker that a publisher hangs on.
func listenSilently() (net.Listener, error) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // held open, never answered
		}
	}()
	return silent, nil
}

// awaitClaimed waits until some pending messages of table are claimed, and returns how many.
func awaitClaimed(ctx context.Context, db *sql.DB, table string) (int, error) {
	var claimed int
	for claimed == 0 {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("the child claimed nothing")
		}
		time.Sleep(10 * time.Millisecond)
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE state = 'pending' AND claim_token IS NOT NULL").Scan(&claimed); err != nil {
			return 0, err
		}
	}
	return claimed, nil
}

// fillPostgres creates a Postgres outbox holding n messages; the caller closes db, then
// drops pg.
func fillPostgres(n int) (*postgresDB, *sql.DB, dbtest.Store, error) {
	pg, err := newPostgres()
	if err != nil {
		return nil, nil, nil, err
	}
	db, err := pgstore.Open(pg.dsn)
	if err != nil {
		pg.drop()
		return nil, nil, nil, err
	}
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{}))
	if err == nil {
		err = st.Migrate(context.Background())
	}
	if err == nil {
		err = fill(st, n)
	}
	if err != nil {
		db.Close()
		pg.drop()
		return nil, nil, nil, fmt.Errorf("fill: %w", err)
	}
	return pg, db, st, nil
}
