// Metrics: the dispatcher's OpenTelemetry metrics, exported for Prometheus, its status
// handler and the operator console, on one machine with no services.
//
// The dispatcher reports through the OpenTelemetry metric API (dispatcher.Config.MeterProvider);
// the application brings the exporter. This program builds an SDK MeterProvider whose reader
// is the OpenTelemetry Prometheus exporter, registered on its own prometheus.Registry (not the
// global one), and serves that registry at /metrics and the dispatcher's status handler at
// /status, and the operator console (package dispatcher/console) under /console/. It writes messages to a few topics in transactions (SQLite outbox, in-process Kafka
// broker on loopback), one of them to a topic whose every publish fails, so that after
// dispatcher.Config.MaxAttempts attempts it is parked. Once every other message is delivered
// and that one is parked, it scrapes its own endpoints over HTTP, checks what they report
// against what it wrote, prints the outbox_* samples and the status JSON, and exits 0; with
// -serve it then keeps serving until interrupted, for a real Prometheus to scrape.
//
//	go run ./examples/metrics [-addr 127.0.0.1:9464] [-messages 500] [-serve]
//
// The endpoints listen on loopback only: they have no authentication. Example Prometheus
// scrape config for -serve:
//
//	scrape_configs: [{job_name: outbox, static_configs: [{targets: ["127.0.0.1:9464"]}]}]
package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/otlptranslator"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/console"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// topics receive the messages that are delivered; failingTopic receives the one that is
// parked.
var topics = []string{"orders", "payments", "shipments"}

const (
	failingTopic = "legacy-audit"
	// maxAttempts parks the failing message quickly.
	maxAttempts = 3
	// txSize is how many messages each transaction writes.
	txSize = 50
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, nil); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(1)
	}
}

// report is what run hands to its serving hook.
type report struct {
	// Addr is the address the endpoints listen on (the bound port when -addr asked for 0).
	Addr string
	// Written counts the messages written by topic, the failing one included.
	Written map[string]int
	// FailingTopic is the topic whose publishes fail.
	FailingTopic string
}

// run runs the program with the command-line arguments args, printing to out. If serving is
// not nil, run calls it once the outbox has settled and the scrape was printed, while the
// endpoints still serve; without -serve, run stops serving when serving returns.
func run(ctx context.Context, args []string, out io.Writer, serving func(report)) error {
	fs := flag.NewFlagSet("metrics", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", "127.0.0.1:9464", "loopback address to serve /metrics and /status on (port 0: any free port)")
	n := fs.Int("messages", 500, "messages to write, one of which goes to the failing topic")
	serve := fs.Bool("serve", false, "keep serving after the report, until interrupted")
	timeout := fs.Duration("timeout", time.Minute, "give up if the outbox has not settled after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *n < 2 {
		return errors.New("-messages must be at least 2: one for the failing topic and one to deliver")
	}
	if *timeout <= 0 {
		return errors.New("-timeout must be positive")
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// The endpoints have no authentication: serve them on loopback only.
	if host, _, err := net.SplitHostPort(*addr); err != nil {
		return fmt.Errorf("-addr %s: %w", *addr, err)
	} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-addr %s is not a loopback address: this example serves on loopback only (e.g. 127.0.0.1:9464)", *addr)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on -addr %s: %w", *addr, err)
	}
	defer ln.Close()
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		return fmt.Errorf("-addr %s is not a loopback address: this example serves on loopback only (e.g. 127.0.0.1:9464)", *addr)
	}
	bound := ln.Addr().String()

	// The OpenTelemetry SDK, exporting to a registry of our own. The translation strategy is
	// explicit: outbox.messages.published becomes outbox_messages_published_total, seconds get
	// a _seconds suffix, and annotations such as {message} are dropped.
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(
		otelprom.WithRegisterer(registry),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return fmt.Errorf("prometheus exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", "outbox-metrics-example")))
	if err != nil {
		return fmt.Errorf("resource: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter), sdkmetric.WithResource(res))
	defer mp.Shutdown(context.WithoutCancel(ctx))

	// An in-process Kafka broker on loopback.
	cluster, err := startKafka()
	if err != nil {
		return fmt.Errorf("start kafka: %w", err)
	}
	defer cluster.Close()

	// The outbox, in a SQLite file of its own.
	dir, err := os.MkdirTemp("", "outbox-metrics-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := sqlitestore.Open(filepath.Join(dir, "outbox.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	outbox, err := sqlitestore.New(db, sqlitestore.Config{})
	if err != nil {
		return err
	}
	if err := outbox.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	// The dispatcher, with the MeterProvider. Short retry waits park the failing message in
	// well under a second; production settings would be the defaults.
	pub, err := kafkapub.New(kafkapub.Config{Brokers: cluster.ListenAddrs()})
	if err != nil {
		return fmt.Errorf("kafka publisher: %w", err)
	}
	defer pub.Close()
	d, err := dispatcher.New(outbox, failTopic{Publisher: pub, topic: failingTopic}, dispatcher.Config{
		MaxAttempts:   maxAttempts,
		RetryInitial:  50 * time.Millisecond,
		RetryMax:      200 * time.Millisecond,
		PollInterval:  100 * time.Millisecond,
		Logger:        logger,
		MeterProvider: mp,
	})
	if err != nil {
		return err
	}
	// Interrupting the program ends ctx; the deferred Stop then stops the dispatcher gracefully.
	if err := d.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		d.Stop(stopCtx)
	}()

	// The endpoints. The console, like the others, has no authentication of its own: an
	// application mounts it behind its own.
	ops, err := console.New(console.Config{Store: outbox, Dispatcher: d, Logger: logger})
	if err != nil {
		return err
	}
	defer ops.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.Handle("GET /status", d.StatusHandler(dispatcher.StatusConfig{MaxLag: 30 * time.Second}))
	mux.Handle("/console/", http.StripPrefix("/console", ops))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutCtx)
	}()
	fmt.Fprintf(out, "outbox metrics: serving http://%s/metrics, http://%s/status and the console at http://%s/console/\n", bound, bound, bound)

	// The application: messages written in transactions.
	settleCtx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	written, err := write(settleCtx, db, outbox, *n)
	if err != nil {
		return fmt.Errorf("write messages: %w", err)
	}
	fmt.Fprintf(out, "wrote %d messages: %s\n", *n, formatCounts(written))

	// Every message but one delivered, that one parked.
	if err := settle(settleCtx, outbox, 1); err != nil {
		return err
	}

	// Scrape our own endpoints, as Prometheus and a readiness probe would.
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	code, metrics, err := get(settleCtx, client, "http://"+bound+"/metrics")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET /metrics: status %d: %s", code, metrics)
	}
	code, statusJSON, err := get(settleCtx, client, "http://"+bound+"/status")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET /status: status %d, want 200: %s", code, statusJSON)
	}
	buckets := 0
	fmt.Fprintf(out, "\nGET /metrics (outbox_* samples; histogram _bucket lines left out):\n")
	for line := range strings.Lines(string(metrics)) {
		switch {
		case !strings.HasPrefix(line, "outbox_"):
		case strings.Contains(line, "_bucket{"):
			buckets++
		default:
			fmt.Fprint(out, "  "+line)
		}
	}
	fmt.Fprintf(out, "  (%d _bucket lines)\n", buckets)
	fmt.Fprintf(out, "\nGET /status: %d\n  %s", code, statusJSON)
	if err := check(metrics, statusJSON, written); err != nil {
		return fmt.Errorf("FAIL: %w", err)
	}
	fmt.Fprintln(out, "\nOK: the metrics and the status agree with what was written")

	if serving != nil {
		serving(report{Addr: bound, Written: written, FailingTopic: failingTopic})
	}
	if !*serve {
		return nil
	}
	fmt.Fprintf(out, "serving on %s until interrupted\n", bound)
	select {
	case <-ctx.Done():
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}

// failTopic is the Kafka publisher, except that every publish to one topic fails, as it
// would if the broker refused the topic. The error is not [publisher.Permanent], so the
// dispatcher retries the message until Config.MaxAttempts and then parks it. failTopic keeps
// the Kafka publisher's batch publishing ([publisher.BatchPublisher]).
type failTopic struct {
	*kafkapub.Publisher
	topic string
}

var _ publisher.BatchPublisher = failTopic{}

func (p failTopic) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

func (p failTopic) PublishBatch(topic string, msgs []*message.Message) error {
	if topic == p.topic {
		return fmt.Errorf("topic %s refuses every message (the example's failing topic)", topic)
	}
	return p.Publisher.PublishBatch(topic, msgs)
}

// write writes n messages, txSize per transaction: the first goes to failingTopic, the others
// round-robin to topics, keyed by customer. It returns how many went to each topic.
func write(ctx context.Context, db *sql.DB, outbox store.Writer, n int) (map[string]int, error) {
	written := map[string]int{}
	for start := 0; start < n; start += txSize {
		batch := make([]store.Message, 0, txSize)
		for i := start; i < min(start+txSize, n); i++ {
			topic := failingTopic
			if i > 0 {
				topic = topics[(i-1)%len(topics)]
			}
			payload, err := json.Marshal(map[string]int{"seq": i})
			if err != nil {
				return nil, err
			}
			batch = append(batch, store.Message{
				Topic:   topic,
				Key:     fmt.Sprintf("customer-%d", i%25),
				Payload: payload,
				Headers: map[string]string{"content_type": "application/json"},
			})
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return nil, err
		}
		// The application's own rows would be written here, in the same transaction.
		if err := outbox.Write(ctx, tx, batch...); err != nil {
			tx.Rollback()
			return nil, err
		}
		if err := tx.Commit(); err != nil {
			return nil, err
		}
		for _, m := range batch {
			written[m.Topic]++
		}
	}
	return written, nil
}

// settle waits until no message is pending and parked are parked.
func settle(ctx context.Context, op store.Operator, parked int64) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := op.Stats(ctx)
		if err == nil && s.Pending == 0 && s.Parked == parked {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("waiting for the outbox to settle: %w", err)
			}
			return fmt.Errorf("the outbox did not settle: %d pending and %d parked, want 0 and %d: %w", s.Pending, s.Parked, parked, ctx.Err())
		case <-tick.C:
		}
	}
}

func get(ctx context.Context, client *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return resp.StatusCode, body, nil
}

// check compares the scrape and the status with what was written: every message but the
// failing one published, on its topic; the failing one failed maxAttempts times and parked;
// nothing pending.
func check(metrics, statusJSON []byte, written map[string]int) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bufio.NewReader(strings.NewReader(string(metrics))))
	if err != nil {
		return fmt.Errorf("parse /metrics: %w", err)
	}
	var errs []error
	want := func(name string, labels map[string]string, v float64) {
		if got, ok := value(fams[name], labels); !ok {
			errs = append(errs, fmt.Errorf("/metrics has no %s%v", name, labels))
		} else if got != v {
			errs = append(errs, fmt.Errorf("/metrics: %s%v is %v, want %v", name, labels, got, v))
		}
	}
	for _, topic := range topics {
		want("outbox_messages_published_total", map[string]string{"topic": topic}, float64(written[topic]))
	}
	want("outbox_publish_failures_total", map[string]string{"topic": failingTopic}, maxAttempts)
	want("outbox_messages_parked_total", map[string]string{"topic": failingTopic}, 1)
	want("outbox_parked", nil, 1)
	want("outbox_pending", nil, 0)
	delivered := 0
	for _, topic := range topics {
		delivered += written[topic]
	}
	if h, ok := histogram(fams["outbox_delivery_latency_seconds"]); !ok || h.GetSampleCount() != uint64(delivered) {
		errs = append(errs, fmt.Errorf("/metrics: outbox_delivery_latency_seconds counts %d deliveries, want %d", h.GetSampleCount(), delivered))
	}

	var st dispatcher.Status
	if err := json.Unmarshal(statusJSON, &st); err != nil {
		errs = append(errs, fmt.Errorf("parse /status: %w", err))
	} else if !st.Healthy || st.Pending != 0 || st.Parked != 1 || st.Published != int64(delivered) {
		errs = append(errs, fmt.Errorf("/status reports healthy %v, %d pending, %d parked, %d published; want true, 0, 1, %d",
			st.Healthy, st.Pending, st.Parked, st.Published, delivered))
	}
	return errors.Join(errs...)
}

// value returns the value of the counter or gauge sample of fam whose labels include labels.
func value(fam *dto.MetricFamily, labels map[string]string) (float64, bool) {
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func histogram(fam *dto.MetricFamily) (*dto.Histogram, bool) {
	for _, m := range fam.GetMetric() {
		if m.Histogram != nil {
			return m.Histogram, true
		}
	}
	return nil, false
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
}

func formatCounts(counts map[string]int) string {
	var parts []string
	for _, topic := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s %d", topic, counts[topic]))
	}
	return strings.Join(parts, ", ")
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
