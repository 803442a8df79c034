package natspub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outboxgo/outbox/publisher"
)

// Defaults of [Config].
const (
	DefaultAckTimeout = 5 * time.Second
	DefaultMaxPending = 4000
)

// Config configures [New]. Set URL or Conn.
type Config struct {
	// URL of the NATS server, or of several separated by commas, as nats.Connect takes it.
	URL string
	// Options for the connection New opens to URL: credentials, TLS, a name. New puts
	// nats.Name("outbox"), nats.MaxReconnects(-1) (never give up on a server that is down)
	// and nats.RetryOnFailedConnect(true) (start while it is down) before them, which they
	// may override, and nats.ReconnectBufSize(-1) after them, which keeps each key's order
	// (see the package documentation).
	Options []natsio.Option
	// Conn is a connection to publish on instead of one to URL; Close leaves it open. It
	// must have been connected with nats.ReconnectBufSize(-1).
	Conn *natsio.Conn
	// AutoProvision creates, before the first publish to a topic, a stream named after the
	// topic that takes the topic as its subject, when no stream of that name exists (what
	// watermill-nats does with JetStream.AutoProvision; the stream keeps its messages in
	// files, with the server's defaults otherwise). Without it, the streams are the
	// operator's: until one takes a topic's subject, its messages fail and wait.
	AutoProvision bool
	// AckTimeout is how long a batch waits for the server's acknowledgements; a message not
	// acknowledged by then is reported failed, and published again later. Defaults to
	// DefaultAckTimeout.
	AckTimeout time.Duration
	// MaxPending is how many publishes may wait for their acknowledgement at once, over all
	// the batches in progress; a batch that would go past it waits for room, up to
	// AckTimeout. Defaults to DefaultMaxPending.
	MaxPending int
	// Marshaler turns watermill messages into NATS messages. Defaults to watermill-nats'
	// NATSMarshaler, whose messages watermill-nats' subscribers read.
	Marshaler wmnats.Marshaler
}

// Publisher is a watermill publisher that publishes all the messages of a call to JetStream
// at once, with pipelined asynchronous acknowledgements, and reports which failed. It
// implements [publisher.BatchPublisher]. It is safe for concurrent use.
type Publisher struct {
	nc            *natsio.Conn
	ownConn       bool
	js            jetstream.JetStream
	marshaler     wmnats.Marshaler
	autoProvision bool
	ackTimeout    time.Duration

	// mu is held for reading by each publish and for writing by Close, which thereby waits
	// for the publishes in progress.
	mu     sync.RWMutex
	closed bool

	provisionMu sync.Mutex
	provisioned map[string]bool // topics whose stream exists; guarded by provisionMu
}

var _ publisher.BatchPublisher = (*Publisher)(nil)

var errClosed = errors.New("outbox: natspub publisher closed")

// New returns a [Publisher]. It checks the configuration and, given a URL, connects; a
// server that is down does not fail it (see [Publisher]). Its errors name the field at fault.
func New(cfg Config) (*Publisher, error) {
	fail := func(field, format string, args ...any) (*Publisher, error) {
		return nil, fmt.Errorf("outbox: natspub.New: %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case cfg.URL == "" && cfg.Conn == nil:
		return fail("URL", "required (or Conn)")
	case cfg.URL != "" && cfg.Conn != nil:
		return fail("Conn", "set URL or Conn, not both")
	case cfg.Conn != nil && len(cfg.Options) > 0:
		return fail("Options", "apply to the connection New opens to URL; Conn is already connected")
	case cfg.Conn != nil && cfg.Conn.IsClosed():
		return fail("Conn", "closed")
	case cfg.Conn != nil && cfg.Conn.Opts.ReconnectBufSize != -1:
		return fail("Conn", "connect with nats.ReconnectBufSize(-1), so that nothing published while it reconnects is sent after messages that the old connection lost (ReconnectBufSize is %d)", cfg.Conn.Opts.ReconnectBufSize)
	case cfg.AckTimeout < 0:
		return fail("AckTimeout", "must not be negative, got %v", cfg.AckTimeout)
	case cfg.MaxPending < 0:
		return fail("MaxPending", "must not be negative, got %d", cfg.MaxPending)
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.Marshaler == nil {
		cfg.Marshaler = &wmnats.NATSMarshaler{}
	}
	p := &Publisher{nc: cfg.Conn, marshaler: cfg.Marshaler, autoProvision: cfg.AutoProvision,
		ackTimeout: cfg.AckTimeout, provisioned: map[string]bool{}}
	if p.nc == nil {
		opts := append([]natsio.Option{natsio.Name("outbox"), natsio.MaxReconnects(-1), natsio.RetryOnFailedConnect(true)},
			cfg.Options...)
		opts = append(opts, natsio.ReconnectBufSize(-1))
		nc, err := natsio.Connect(cfg.URL, opts...)
		if err != nil {
			return fail("URL", "%v", err)
		}
		p.nc, p.ownConn = nc, true
	}
	js, err := jetstream.New(p.nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxPending))
	if err != nil {
		p.Close()
		return fail("MaxPending", "%v", err)
	}
	p.js = js
	return p, nil
}

// Conn returns the connection the publisher publishes on.
func (p *Publisher) Conn() *natsio.Conn { return p.nc }

// Publish implements message.Publisher: it publishes msgs as one batch (see PublishBatch).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

// PublishBatch implements [publisher.BatchPublisher]. It sends every message of the batch
// in order without waiting, then waits for their acknowledgements, up to AckTimeout. Once a
// message of a key fails, the later messages of that key are not sent, or, when already
// sent, are reported failed all the same. When some messages fail it returns a
// [*publisher.BatchError] naming them; errors that retrying cannot fix are marked with
// [publisher.Permanent] (see the package documentation).
func (p *Publisher) PublishBatch(topic string, msgs []*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	if err := checkSubject(topic); err != nil {
		return publisher.Permanent(err)
	}
	if p.autoProvision {
		if err := p.provision(topic); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(p.ackTimeout)
	b := publisher.NewBatchOutcome(msgs)
	futures := make([]jetstream.PubAckFuture, len(msgs))
	var down error // the connection refused a message: the rest are not sent either
	for i, msg := range msgs {
		if b.Held(i) {
			continue
		}
		if down != nil {
			b.Fail(i, fmt.Errorf("not sent: an earlier message of the batch failed: %w", down))
			continue
		}
		nm, err := p.marshal(topic, msg)
		if err == nil {
			futures[i], err = p.js.PublishMsgAsync(nm, jetstream.WithMsgID(msg.UUID),
				jetstream.WithRetryAttempts(0), jetstream.WithStallWait(max(time.Until(deadline), time.Millisecond)))
			if err != nil {
				err = classify(err)
				if !publisher.IsPermanent(err) {
					down = err
				}
			}
		}
		if err != nil {
			b.Fail(i, err)
		}
	}
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	expired := false
	for i, f := range futures {
		if f == nil {
			continue
		}
		var err error
		if !expired {
			select {
			case <-f.Ok():
			case err = <-f.Err():
			case <-timeout.C:
				expired = true
			}
		}
		if expired {
			select {
			case <-f.Ok():
			case err = <-f.Err():
			default:
				err = fmt.Errorf("no acknowledgement from the server within AckTimeout (%v)", p.ackTimeout)
			}
		}
		if err != nil {
			b.Fail(i, classify(err))
		}
	}
	return b.Err()
}

// Close implements message.Publisher: it waits for the batches in progress, drops the
// subscription that received their acknowledgements, and closes the connection if New
// opened it.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.js != nil {
		p.js.CleanupPublisher()
	}
	if p.ownConn && p.nc != nil {
		p.nc.Close()
	}
	return nil
}

// marshal turns msg into the NATS message to send, with its headers checked.
func (p *Publisher) marshal(topic string, msg *message.Message) (*natsio.Msg, error) {
	nm, err := p.marshaler.Marshal(topic, msg)
	if err != nil {
		return nil, publisher.Permanent(fmt.Errorf("marshal message %s: %w", msg.UUID, err))
	}
	nm.Subject = topic
	for name, values := range nm.Header {
		for _, v := range values {
			if err := checkHeader(name, v); err != nil {
				return nil, publisher.Permanent(fmt.Errorf("message %s: %w", msg.UUID, err))
			}
		}
	}
	return nm, nil
}

// provision makes sure a stream named after topic exists, creating it to take the topic's
// subject when it does not.
func (p *Publisher) provision(topic string) error {
	p.provisionMu.Lock()
	defer p.provisionMu.Unlock()
	if p.provisioned[topic] {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.ackTimeout)
	defer cancel()
	_, err := p.js.Stream(ctx, topic)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = p.js.CreateStream(ctx, jetstream.StreamConfig{Name: topic, Subjects: []string{topic}})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil // created meanwhile
		}
	}
	if errors.Is(err, jetstream.ErrInvalidStreamName) {
		return fmt.Errorf("outbox: nats: AutoProvision cannot name a stream %q (no '.', '*', '>', '/', '\\' or white space): create a stream that takes subject %q: %w", topic, topic, err)
	}
	if err != nil {
		return fmt.Errorf("outbox: nats: stream %s for topic %s: %w", topic, topic, err)
	}
	p.provisioned[topic] = true
	return nil
}

// checkSubject refuses a topic that is not a subject one can publish to: the server would
// close the connection on some, and a wildcard publishes nowhere.
func checkSubject(topic string) error {
	if topic == "" || strings.ContainsAny(topic, " \t\r\n\x00") {
		return fmt.Errorf("outbox: nats: topic %q is not a subject (empty, white space or NUL)", topic)
	}
	for _, token := range strings.Split(topic, ".") {
		if token == "" {
			return fmt.Errorf("outbox: nats: topic %q is not a subject (an empty token between dots)", topic)
		}
		if token == "*" || token == ">" {
			return fmt.Errorf("outbox: nats: topic %q has a wildcard token; one publishes to a subject without wildcards", topic)
		}
	}
	return nil
}

// checkHeader refuses what NATS headers do not carry unchanged: they are MIME headers, whose
// reader splits a name at ':', ends a line at a line break and trims values.
func checkHeader(name, value string) error {
	if name == "" || strings.ContainsAny(name, ": \t\r\n") || strings.ContainsFunc(name, isControl) {
		return fmt.Errorf("header name %q cannot travel as a NATS header (':', white space or a control character)", name)
	}
	if strings.ContainsAny(value, "\r\n") || strings.TrimSpace(value) != value {
		return fmt.Errorf("the value of header %q cannot travel as a NATS header unchanged (a line break, or white space at either end)", name)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// classify marks the errors that retrying cannot fix: a message larger than the server
// accepts (max_payload) or than the stream does (max_msg_size), and a subject the client
// refuses. Everything else is retried: no stream for the subject, a full stream, a lost
// connection, an acknowledgement that did not come.
func classify(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, natsio.ErrMaxPayload), errors.Is(err, natsio.ErrBadSubject):
		return publisher.Permanent(err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeMessageTooLarge:
		return publisher.Permanent(err)
	}
	return err
}

// jsErrCodeMessageTooLarge is the server's JSStreamMessageExceedsMaximumErr, "message size
// exceeds maximum allowed", for a message over the stream's max_msg_size.
const jsErrCodeMessageTooLarge jetstream.ErrorCode = 10054
