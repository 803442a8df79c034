// Saga: the payments-and-orders story as two services in one program, each with its own
// database and outbox, talking through Kafka.
//
// The orders service writes each order (PENDING) and its OrderCreated event in one
// transaction, and reserves the order's stock when it hears its own event (RESERVED). The
// payments service consumes OrderCreated, decides (declined over 400.00 or for a blocked
// customer), and writes the payment and its PaymentCompleted or PaymentFailed event in one
// transaction. The orders service consumes the outcome: the order is PAID, or the compensating
// transaction cancels it and releases its stock. Each service's dispatcher publishes its own
// outbox; every consumer runs behind the idempotency middleware, so each effect happens once
// per message however often Kafka delivers it.
//
// With -chaos it restarts both dispatchers abruptly mid-flow, loses publisher acks (so the
// dispatcher publishes again), fails handlers after they wrote (the transaction rolls back
// and Kafka redelivers), and publishes every consumed message a second time. At the end it
// checks that every order is paid with exactly one completed payment or cancelled with
// exactly one failed payment, and exits 0 only then.
//
//	go run ./examples/saga [-orders 300] [-rate 100] [-chaos] [-postgres DSN] [-timeout 2m] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxgo/outbox/publisher/kafkapub"
)

// Topics of the saga's events.
const (
	ordersTopic   = "orders"
	paymentsTopic = "payments"
)

type config struct {
	Orders   int
	Rate     int // orders created per second; 0: as fast as possible
	Chaos    bool
	Postgres string // DSN; empty: SQLite files in a temporary directory
	Timeout  time.Duration
	Verbose  bool
	Out      io.Writer // progress and summary; nil: stdout

	// withoutInbox runs the consumers without the idempotency middleware. Only the test that
	// shows the check catching duplicate payments sets it.
	withoutInbox bool
}

func (c config) validate() error {
	switch {
	case c.Orders <= 0:
		return fmt.Errorf("-orders must be positive (got %d)", c.Orders)
	case c.Rate < 0:
		return fmt.Errorf("-rate must not be negative (got %d)", c.Rate)
	case c.Timeout <= 0:
		return fmt.Errorf("-timeout must be positive (got %v)", c.Timeout)
	}
	if c.Postgres != "" {
		if _, err := pgx.ParseConfig(c.Postgres); err != nil {
			return fmt.Errorf("-postgres: %w", err) // pgx redacts the password
		}
	}
	return nil
}

// parseFlags reads the command line; it prints its errors, and the usage, to output.
func parseFlags(args []string, output io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("saga", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.IntVar(&c.Orders, "orders", 300, "orders to create")
	fs.IntVar(&c.Rate, "rate", 100, "orders created per second (0: as fast as possible)")
	fs.BoolVar(&c.Chaos, "chaos", false, "restart dispatchers, lose acks, fail handlers and duplicate every message while it runs")
	fs.StringVar(&c.Postgres, "postgres", "", "Postgres DSN: each service gets a fresh schema there, dropped at the end (default: SQLite files in a temporary directory)")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Minute, "give up after this long")
	fs.BoolVar(&c.Verbose, "v", false, "log what the dispatchers, inboxes and watermill do")
	if err := fs.Parse(args); err != nil {
		return c, err // fs printed it, with the usage
	}
	err := c.validate()
	if fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintln(output, "saga:", err)
	}
	return c, err
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "saga:", err)
		stop()
		os.Exit(1)
	}
}

// run runs the saga for cfg.Orders orders, then checks both databases. It returns nil only if
// the check holds.
func run(ctx context.Context, cfg config) (err error) {
	if err := cfg.validate(); err != nil {
		return err
	}
	out := cfg.Out
	if out == nil {
		out = os.Stdout
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	// Quiet by default: under -chaos, failed handlers and publishes are the point.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	wlog := watermill.LoggerAdapter(watermill.NopLogger{})
	if cfg.Verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		wlog = watermill.NewSlogLogger(logger)
	}

	cluster, err := startKafka()
	if err != nil {
		return fmt.Errorf("start kafka: %w", err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	dbs, err := openDatabases(ctx, cfg.Postgres)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dbs.close()) }()

	track := newTracker()
	var chaos *chaos
	if cfg.Chaos {
		dup, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
		if err != nil {
			return fmt.Errorf("kafka publisher for duplicates: %w", err)
		}
		defer dup.Close()
		chaos = newChaos(dup, track, logger)
	}
	newService := func(name string, db *database) *service {
		return &service{name: name, db: db, brokers: brokers, log: logger.With(slog.String("service", name)),
			wlog: wlog, track: track, chaos: chaos, withoutInbox: cfg.withoutInbox}
	}
	orders := &ordersService{service: newService("orders", dbs.orders), n: cfg.Orders}
	payments := &paymentsService{service: newService("payments", dbs.payments)}
	if err := orders.migrate(ctx); err != nil {
		return fmt.Errorf("orders database: %w", err)
	}
	if err := payments.migrate(ctx); err != nil {
		return fmt.Errorf("payments database: %w", err)
	}
	track.expect(ordersTopic, reserveHandler, chargeHandler)
	track.expect(paymentsTopic, applyPaymentHandler)

	mode := "no chaos"
	if cfg.Chaos {
		mode = "chaos"
	}
	fmt.Fprintf(out, "saga: %d orders, %s, Kafka %s, %s\n", cfg.Orders, dbs.where, brokers[0], mode)

	// Shut down in reverse: consumers first, so that nothing is handled half-way, then the
	// dispatchers.
	for _, s := range []*service{orders.service, payments.service} {
		if err := s.startDispatcher(ctx); err != nil {
			return fmt.Errorf("%s dispatcher: %w", s.name, err)
		}
		defer func() { err = errors.Join(err, s.stopDispatchers()) }()
	}
	if err := payments.start(ctx); err != nil {
		return fmt.Errorf("payments consumer: %w", err)
	}
	defer func() { err = errors.Join(err, payments.stopRouter()) }()
	if err := orders.start(ctx); err != nil {
		return fmt.Errorf("orders consumers: %w", err)
	}
	defer func() { err = errors.Join(err, orders.stopRouter()) }()

	// The order writer and the chaos end before the services stop.
	flowCtx, stopFlow := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer background.Wait()
	defer stopFlow()
	start := time.Now()
	created := make(chan error, 1)
	background.Go(func() { created <- orders.create(flowCtx, cfg.Rate) })
	crashed := make(chan error, 1)
	if chaos != nil {
		background.Go(func() {
			crashed <- chaos.crashDispatchers(flowCtx, cfg.Orders,
				crashTarget{orders.service, orders.created.Load},
				crashTarget{payments.service, func() int64 { return track.handled(chargeHandler) }})
		})
	} else {
		crashed <- nil
	}

	// Wait until every order is settled and nothing is left in flight: every outbox message
	// delivered and handled, every copy handled too.
	var flowErr error
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for ticks := 1; ; ticks++ {
		select {
		case err := <-created:
			created = nil
			if err != nil {
				flowErr = fmt.Errorf("creating orders: %w", err)
				break wait
			}
		case err := <-crashed:
			crashed = nil
			if err != nil {
				flowErr = fmt.Errorf("chaos: %w", err)
				break wait
			}
		case <-ctx.Done():
			break wait
		case <-tick.C:
			if ticks%5 == 0 {
				printProgress(ctx, out, time.Since(start), orders, payments, track, chaos)
			}
			if created != nil || crashed != nil {
				continue
			}
			done, err := quiescent(ctx, track, cfg.Orders, orders.service, payments.service)
			if err != nil && ctx.Err() == nil {
				flowErr = err
				break wait
			}
			if done {
				break wait
			}
		}
	}
	if flowErr == nil && ctx.Err() != nil {
		flowErr = fmt.Errorf("not done after %v: %w", time.Since(start).Round(time.Millisecond), ctx.Err())
	}
	stopFlow()
	background.Wait()
	elapsed := time.Since(start)
	// The check runs also after a timeout, to say what is stuck.
	checkCtx, cancelCheck := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelCheck()
	printProgress(checkCtx, out, elapsed, orders, payments, track, chaos)

	// Stop everything before checking, so that nothing changes under the check.
	stopErr := errors.Join(orders.stopRouter(), payments.stopRouter(), orders.stopDispatchers(), payments.stopDispatchers())
	if stopErr != nil {
		flowErr = errors.Join(flowErr, stopErr)
	}
	res, err := check(checkCtx, cfg.Orders, dbs.orders, dbs.payments)
	if err != nil {
		return errors.Join(flowErr, fmt.Errorf("check: %w", err))
	}
	printSummary(out, res, elapsed, orders.service, payments.service, track, chaos)
	if len(res.problems) > 0 {
		fmt.Fprintln(out, "FAIL: the databases disagree:")
		for i, p := range res.problems {
			if i == maxProblems {
				fmt.Fprintf(out, "  ... and %d more\n", len(res.problems)-i)
				break
			}
			fmt.Fprintln(out, "  -", p)
		}
		return errors.Join(flowErr, fmt.Errorf("consistency check failed: %d problems", len(res.problems)))
	}
	if flowErr != nil {
		return flowErr
	}
	fmt.Fprintln(out, "OK: every order is PAID with exactly one completed payment or CANCELLED with exactly one failed payment; stock and events agree")
	return nil
}

const maxProblems = 20

// quiescent reports whether the saga has come to rest: every order settled, every outbox
// message delivered and handled by each consumer of its topic, and every duplicate sent on
// purpose handled too.
func quiescent(ctx context.Context, track *tracker, n int, services ...*service) (bool, error) {
	counts, err := statusCounts(ctx, services[0].db)
	if err != nil || counts[statusPaid]+counts[statusCancelled] < n {
		return false, err
	}
	for _, s := range services {
		if ok, err := s.outboxHandled(ctx, track); err != nil || !ok {
			return false, err
		}
	}
	return track.copiesHandled(), nil
}

func printProgress(ctx context.Context, out io.Writer, elapsed time.Duration, o *ordersService, p *paymentsService, track *tracker, c *chaos) {
	counts, err := statusCounts(ctx, o.db)
	if err != nil {
		return // timed out: the summary says what happened
	}
	pays, err := countRows(ctx, p.db, (*Payment)(nil))
	if err != nil {
		return
	}
	line := fmt.Sprintf("  %5.1fs  created %4d  pending %4d  reserved %4d  paid %4d  cancelled %4d | payments %4d  dups dropped %4d",
		elapsed.Seconds(), o.created.Load(), counts[statusPending], counts[statusReserved], counts[statusPaid],
		counts[statusCancelled], pays, track.dropped.Load())
	if c != nil {
		line += fmt.Sprintf(" | restarts %d  lost acks %d  rolled back %d", c.restarts.Load(), c.lostAcks.Load(), c.rolledBack.Load())
	}
	fmt.Fprintln(out, line)
}

func printSummary(out io.Writer, r *checkResult, elapsed time.Duration, o, p *service, track *tracker, c *chaos) {
	declined := 0.0
	if r.orders > 0 {
		declined = 100 * float64(r.cancelled) / float64(r.orders)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "summary")
	fmt.Fprintf(out, "  orders        %d: %d PAID, %d CANCELLED (%.0f%% declined), %d not settled\n",
		r.orders, r.paid, r.cancelled, declined, r.orders-r.paid-r.cancelled)
	fmt.Fprintf(out, "  payments      %d: %d completed, %d failed (%s charged)\n", r.payments, r.completed, r.failed, formatCents(r.chargedCents))
	fmt.Fprintf(out, "  events        orders outbox %d (%d published), payments outbox %d (%d published)\n",
		r.ordersOutbox, o.published(), r.paymentsOutbox, p.published())
	fmt.Fprintf(out, "  duplicates    %d delivered again and dropped by the inboxes\n", track.dropped.Load())
	if c != nil {
		fmt.Fprintf(out, "  chaos         %d dispatcher restarts, %d messages re-sent after lost acks, %d copies published, %d handler failures rolled back\n",
			c.restarts.Load(), c.lostAcks.Load(), c.copies.Load(), c.rolledBack.Load())
	}
	fmt.Fprintf(out, "  elapsed       %v\n", elapsed.Round(time.Millisecond))
}

// startKafka starts an in-process Kafka broker, franz-go's kfake, on a free loopback port, so
// that the example needs no services. Topics are created on first use with 8 partitions. A
// real application passes its brokers' addresses to kafkapub.Config instead.
func startKafka() (*kfake.Cluster, error) {
	return kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(8),
	)
}
