package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/middleware/idempotency"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// database is one service's own database: its domain tables, its outbox and its inbox.
type database struct {
	sql    *sql.DB
	bun    *bun.DB
	outbox outboxStore
	inbox  *idempotency.Inbox
}

// outboxStore is what the services use of an outbox, the same on SQLite and Postgres.
type outboxStore interface {
	store.Outbox
	Migrate(ctx context.Context) error
	DB() *sql.DB
	Table() string
}

// databases are the two services' databases: SQLite files in a temporary directory, or two
// fresh schemas in a Postgres database.
type databases struct {
	orders, payments *database
	where            string
	close            func() error
}

func openDatabases(ctx context.Context, dsn string) (*databases, error) {
	if dsn == "" {
		dir, err := os.MkdirTemp("", "outbox-saga-")
		if err != nil {
			return nil, err
		}
		dbs := &databases{where: "SQLite in " + dir}
		var closers []func() error
		dbs.close = func() error {
			var errs []error
			for _, c := range closers {
				errs = append(errs, c())
			}
			return errors.Join(append(errs, os.RemoveAll(dir))...)
		}
		for _, d := range []struct {
			name string
			db   **database
		}{{"orders", &dbs.orders}, {"payments", &dbs.payments}} {
			sqldb, err := sqlitestore.Open(filepath.Join(dir, d.name+".db"))
			if err != nil {
				return nil, errors.Join(err, dbs.close())
			}
			closers = append(closers, sqldb.Close)
			if *d.db, err = newDatabase(ctx, sqldb, ""); err != nil {
				return nil, errors.Join(fmt.Errorf("%s database: %w", d.name, err), dbs.close())
			}
		}
		return dbs, nil
	}

	// Postgres: a schema per service, as if each had its own database. The services' own
	// connections find their tables through search_path.
	admin, err := pgstore.Open(dsn)
	if err != nil {
		return nil, err
	}
	suffix := strings.ToLower(rand.Text()[:8])
	schemas := []string{"saga_orders_" + suffix, "saga_payments_" + suffix}
	dbs := &databases{where: "Postgres schemas " + strings.Join(schemas, " and ")}
	var closers []func() error
	var created []string
	dbs.close = func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range created {
			if _, err := admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+s+" CASCADE"); err != nil {
				errs = append(errs, fmt.Errorf("drop schema %s: %w", s, err))
			}
		}
		return errors.Join(append(errs, admin.Close())...)
	}
	for i, db := range []**database{&dbs.orders, &dbs.payments} {
		schema := schemas[i]
		if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
			return nil, errors.Join(fmt.Errorf("create schema %s: %w", schema, err), dbs.close())
		}
		created = append(created, schema)
		sqldb, err := pgstore.Open(withSearchPath(dsn, schema))
		if err != nil {
			return nil, errors.Join(err, dbs.close())
		}
		closers = append(closers, sqldb.Close)
		if *db, err = newDatabase(ctx, sqldb, schema); err != nil {
			return nil, errors.Join(fmt.Errorf("schema %s: %w", schema, err), dbs.close())
		}
	}
	return dbs, nil
}

// withSearchPath adds search_path to a URL or keyword/value DSN; pgx sends it as a run-time
// parameter when it connects.
func withSearchPath(dsn, schema string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// newDatabase sets up the outbox and the inbox in sqldb; schema is empty on SQLite.
func newDatabase(ctx context.Context, sqldb *sql.DB, schema string) (*database, error) {
	d := &database{sql: sqldb}
	var err error
	outboxCfg, inboxCfg := pgstore.Config{}, idempotency.Config{} // the same Config as sqlitestore.Config
	if schema == "" {
		d.bun = bun.NewDB(sqldb, sqlitedialect.New())
		d.outbox, err = sqlitestore.New(sqldb, outboxCfg)
	} else {
		outboxCfg.Table, inboxCfg.Table = schema+".outbox", schema+".inbox"
		d.bun = bun.NewDB(sqldb, pgdialect.New())
		d.outbox, err = pgstore.New(sqldb, outboxCfg)
	}
	if err != nil {
		return nil, err
	}
	if err := d.outbox.Migrate(ctx); err != nil {
		return nil, err
	}
	if d.inbox, err = idempotency.New(d.bun, inboxCfg); err != nil {
		return nil, err
	}
	return d, d.inbox.Migrate(ctx)
}

// service is what both services share: a database, a dispatcher publishing its outbox to
// Kafka, and a watermill router consuming Kafka behind the inbox.
type service struct {
	name         string
	db           *database
	brokers      []string
	log          *slog.Logger
	wlog         watermill.LoggerAdapter
	track        *tracker
	chaos        *chaos // nil without -chaos
	withoutInbox bool

	mu      sync.Mutex
	current *dispatcherRun // nil while crashed or stopped
	runs    []*dispatcherRun
	reaping sync.WaitGroup

	router     *message.Router
	routerDone chan struct{}
	routerErr  error
	subs       []*wmkafka.Subscriber
}

// dispatcherRun is one dispatcher and its publisher, from start to stop or crash.
type dispatcherRun struct {
	d      *dispatcher.Dispatcher
	pub    *kafkapub.Publisher
	cancel context.CancelFunc // cancels its Start context
}

// startDispatcher starts a new dispatcher, with a new Kafka producer, over the service's outbox.
func (s *service) startDispatcher(ctx context.Context) error {
	pub, err := kafkapub.New(kafkapub.Config{Brokers: s.brokers})
	if err != nil {
		return err
	}
	var p message.Publisher = pub
	if s.chaos != nil {
		p = s.chaos.loseAcks(pub)
	}
	d, err := dispatcher.New(s.db.outbox, p, dispatcher.Config{
		Logger: s.log,
		// Retried messages (lost acks under -chaos) go again soon, so that a run takes seconds.
		RetryInitial: 100 * time.Millisecond,
		RetryMax:     2 * time.Second,
	})
	if err != nil {
		return errors.Join(err, pub.Close())
	}
	runCtx, cancel := context.WithCancel(ctx)
	if err := d.Start(runCtx); err != nil {
		cancel()
		return errors.Join(err, pub.Close())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &dispatcherRun{d: d, pub: pub, cancel: cancel}
	s.current = r
	s.runs = append(s.runs, r)
	return nil
}

// crashDispatcher stops the dispatcher abruptly, as a crash of the service would: by
// cancelling its Start context, or by a Stop whose deadline is too short to wait for anything.
// The batch in flight is abandoned: what was not published yet is given back, or comes back
// after its lease.
func (s *service) crashDispatcher(byCancel bool) {
	s.mu.Lock()
	r := s.current
	s.current = nil
	s.mu.Unlock()
	if r == nil {
		return
	}
	if byCancel {
		r.cancel()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_ = r.d.Stop(ctx) // the deadline passing is the point
		cancel()
	}
	// The abandoned goroutines end on their own; wait for them before closing their producer.
	s.reaping.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.d.Stop(ctx); err != nil {
			s.log.Error("crashed dispatcher did not end", slog.Any("error", err))
		}
		r.cancel()
		if err := r.pub.Close(); err != nil {
			s.log.Error("close producer of crashed dispatcher", slog.Any("error", err))
		}
	})
}

// stopDispatchers stops the running dispatcher gracefully and waits for crashed ones.
func (s *service) stopDispatchers() error {
	s.mu.Lock()
	r := s.current
	s.current = nil
	s.mu.Unlock()
	var errs []error
	if r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, r.d.Stop(ctx))
		cancel()
		r.cancel()
		errs = append(errs, r.pub.Close())
	}
	s.reaping.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s dispatcher: %w", s.name, err)
	}
	return nil
}

// published is how many messages the service's dispatchers published, over all restarts.
func (s *service) published() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, r := range s.runs {
		n += r.d.Stats().Published
	}
	return n
}

// handlerFunc is a consumer's work: every effect goes through tx, which also records the
// message id in the inbox, so that the effects happen once per message.
type handlerFunc func(ctx context.Context, tx bun.Tx, msg *message.Message) error

type handlerSpec struct {
	name, topic, group string
	fn                 handlerFunc
}

// startRouter consumes each handler's topic in its own consumer group and waits until the
// router runs.
func (s *service) startRouter(ctx context.Context, handlers ...handlerSpec) error {
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, s.wlog)
	if err != nil {
		return err
	}
	// Outermost first. The inbox wraps the handler so that its effects and the message id
	// commit together; the chaos that fails handlers sits inside it, so that its failures roll
	// back writes already made, and the one that republishes sits outside, after the commit.
	mws := []message.HandlerMiddleware{s.track.observe}
	if s.chaos != nil {
		mws = append(mws, s.chaos.republish)
	}
	if !s.withoutInbox {
		mws = append(mws, s.db.inbox.Middleware)
	}
	if s.chaos != nil {
		mws = append(mws, s.chaos.failAfterWrite)
	}
	router.AddMiddleware(mws...)
	for _, h := range handlers {
		sub, err := newSubscriber(s.brokers, h.group, s.wlog)
		if err != nil {
			return err
		}
		s.subs = append(s.subs, sub)
		router.AddConsumerHandler(h.name, h.topic, sub, s.handle(h.fn))
	}
	s.router = router
	s.routerDone = make(chan struct{})
	go func() {
		defer close(s.routerDone)
		s.routerErr = router.Run(ctx)
	}()
	select {
	case <-router.Running():
		return nil
	case <-s.routerDone:
		return fmt.Errorf("router stopped: %w", s.routerErr)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newSubscriber(brokers []string, group string, logger watermill.LoggerAdapter) (*wmkafka.Subscriber, error) {
	cfg := wmkafka.DefaultSaramaSubscriberConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest // events written before the group joined count too
	return wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers:               brokers,
		Unmarshaler:           kafkapub.Marshaler{},
		OverwriteSaramaConfig: cfg,
		ConsumerGroup:         group,
		NackResendSleep:       50 * time.Millisecond,
	}, logger)
}

// stopRouter stops consuming and waits for the handlers in progress.
func (s *service) stopRouter() error {
	if s.router == nil {
		return nil
	}
	errs := []error{s.router.Close()}
	<-s.routerDone
	errs = append(errs, s.routerErr)
	for _, sub := range s.subs {
		errs = append(errs, sub.Close())
	}
	s.router, s.subs = nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s router: %w", s.name, err)
	}
	return nil
}

// handle runs fn in the inbox's transaction.
func (s *service) handle(fn handlerFunc) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ctx := msg.Context()
		markRan(ctx)
		if tx, ok := idempotency.TxFromContext(ctx); ok {
			return fn(ctx, tx, msg)
		}
		if !s.withoutInbox {
			return errors.New("no inbox transaction: is the idempotency middleware installed?")
		}
		// Without the inbox (a test only), effects commit on their own, and a redelivery
		// repeats them.
		return s.db.bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error { return fn(ctx, tx, msg) })
	}
}

// outboxHandled reports whether every message in the service's outbox was delivered and
// handled by each consumer of its topic.
func (s *service) outboxHandled(ctx context.Context, track *tracker) (bool, error) {
	rows, err := outboxRows(ctx, s.db.outbox)
	if err != nil {
		return false, err
	}
	for _, r := range rows {
		if r.state != store.Delivered || !track.handledEverywhere(r.topic, r.id) {
			return false, nil
		}
	}
	return true, nil
}

type outboxRow struct {
	id, topic string
	state     store.State
}

func outboxRows(ctx context.Context, st outboxStore) ([]outboxRow, error) {
	rows, err := st.DB().QueryContext(ctx, "SELECT id, topic, state FROM "+st.Table())
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.id, &r.topic, &r.state); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// tracker follows each delivery through the routers, to tell when the saga has come to rest
// and how many duplicates the inboxes dropped.
type tracker struct {
	handlers map[string][]string // topic -> the handlers consuming it; set before the routers start

	mu         sync.Mutex
	seen       map[string]map[string]bool // handler -> ids it handled or dropped
	copiesSent map[string]map[string]bool // topic -> ids whose copy chaos published
	copiesSeen map[string]map[string]bool // handler -> ids whose copy it handled or dropped

	dropped atomic.Int64
}

func newTracker() *tracker {
	return &tracker{handlers: map[string][]string{}, seen: map[string]map[string]bool{},
		copiesSent: map[string]map[string]bool{}, copiesSeen: map[string]map[string]bool{}}
}

func (t *tracker) expect(topic string, handlers ...string) {
	t.handlers[topic] = append(t.handlers[topic], handlers...)
}

type ranKey struct{}

// markRan tells observe that the handler itself ran, so the inbox did not drop the message.
func markRan(ctx context.Context) {
	if ran, ok := ctx.Value(ranKey{}).(*atomic.Bool); ok {
		ran.Store(true)
	}
}

// observe records each delivery that ended well, and counts those the inbox dropped.
func (t *tracker) observe(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ran := new(atomic.Bool)
		name := message.HandlerNameFromCtx(msg.Context())
		msg.SetContext(context.WithValue(msg.Context(), ranKey{}, ran))
		out, err := h(msg)
		if err != nil {
			return out, err
		}
		if !ran.Load() {
			t.dropped.Add(1)
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		seen := t.seen
		if msg.Metadata.Get(copyHeader) != "" {
			seen = t.copiesSeen
		}
		if seen[name] == nil {
			seen[name] = map[string]bool{}
		}
		seen[name][msg.UUID] = true
		return out, nil
	}
}

func (t *tracker) handledEverywhere(topic, id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, h := range t.handlers[topic] {
		if !t.seen[h][id] {
			return false
		}
	}
	return true
}

// handled is how many distinct messages a handler got through.
func (t *tracker) handled(handler string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(len(t.seen[handler]))
}

// claimCopy reports whether the caller is the first to copy the message, and records it.
func (t *tracker) claimCopy(topic, id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.copiesSent[topic][id] {
		return false
	}
	if t.copiesSent[topic] == nil {
		t.copiesSent[topic] = map[string]bool{}
	}
	t.copiesSent[topic][id] = true
	return true
}

func (t *tracker) unclaimCopy(topic, id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.copiesSent[topic], id)
}

func (t *tracker) copiesHandled() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for topic, ids := range t.copiesSent {
		for _, h := range t.handlers[topic] {
			for id := range ids {
				if !t.copiesSeen[h][id] {
					return false
				}
			}
		}
	}
	return true
}

func countRows(ctx context.Context, d *database, model any) (int, error) {
	n, err := d.bun.NewSelect().Model(model).Count(ctx)
	return int(n), err
}
