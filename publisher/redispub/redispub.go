// Package redispub is a Redis Streams publisher for the outbox dispatcher: a batch goes
// out as one pipeline of XADD commands, one round trip per batch rather than one per message,
// and the call reports which messages failed.
//
//	pub, err := redispub.New(redispub.Config{URL: "redis://127.0.0.1:6379/0"})
//	if err != nil {
//		return err
//	}
//	defer pub.Close()
//	d, err := dispatcher.New(outbox, pub, dispatcher.Config{})
//
// # Streams and order
//
// A topic is a stream (the Redis key of that name), whatever the key of a message. Redis
// runs the commands of one connection in the order they arrive, and a pipeline is sent on one
// connection: the XADDs of a batch append its messages to the stream in the batch's order,
// which keeps each key's write order, as the dispatcher hands a key's messages over in write
// order. A stream's entries are read in the order they were appended (XREAD, or XREADGROUP
// by a consumer group); a consumer that processes one entry at a time sees each key in
// write order. Once a message of a key fails, the later messages of that key in the batch
// are not sent, or, when already sent, are reported failed all the same, as
// [publisher.BatchPublisher] requires.
//
// # Acknowledgements and duplicates
//
// A message is reported published once Redis answered its XADD with the new entry's id.
// Redis answers after applying the command in memory: what it keeps across a restart is its
// persistence settings' business (appendonly with appendfsync always keeps every answered
// entry; a server without persistence keeps nothing). Redis drops no duplicates: a message
// published again (its answer lost with the connection, or reported failed behind an earlier
// message of its key) is appended again, and consumers drop duplicates by message id (see the
// idempotency middleware). go-redis resends a pipeline whose connection failed (its
// MaxRetries), which may append the first messages of a batch twice, never out of order.
//
// The wire format is watermill-redisstream's (DefaultMarshallerUnmarshaller: the UUID, the
// metadata in msgpack and the payload as fields of the entry), which watermill-redisstream's
// subscriber reads as it is. The publisher encodes it itself, the fields always in that order
// (a custom [Config].Marshaller's fields in their names' order): Redis stores the entries
// that repeat the fields of a stream node's first entry without their names, and spends less
// than half the time on such an XADD as on one whose fields come in a Go map's random order.
//
// # Errors
//
// [New] does not wait for the server: go-redis connects on the first command, and until
// Redis answers, publishes fail with an error that is not [publisher.Permanent], the
// dispatcher retrying them with its backoff and holding their keys. A message that cannot be
// marshaled (metadata under the marshaller's reserved name) is marked [publisher.Permanent]
// and parked at once; every error of Redis itself is retried, a key holding another type
// (WRONGTYPE) or a server out of memory among them, which an operator can fix.
package redispub

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack"

	"github.com/outboxgo/outbox/publisher"
)

// DefaultTimeout is the default of [Config].Timeout.
const DefaultTimeout = 5 * time.Second

// Config configures [New]. Set URL or Client.
type Config struct {
	// URL of the Redis server, as redis.ParseURL takes it: redis://[user:password@]host:port/db,
	// or rediss:// for TLS.
	URL string
	// Client is a go-redis client to publish through instead of one to URL (a single server,
	// a cluster or a failover client); Close leaves it open.
	Client redis.UniversalClient
	// MaxLen trims each stream to about this many entries as messages are appended (XADD
	// MAXLEN ~), the oldest first, whether consumers read them or not. 0 keeps every entry.
	MaxLen int64
	// Timeout bounds a batch's round trip. Defaults to DefaultTimeout.
	Timeout time.Duration
	// Marshaller turns watermill messages into stream entries. Defaults to
	// watermill-redisstream's DefaultMarshallerUnmarshaller, whose entries its subscriber
	// reads.
	Marshaller wmredis.Marshaller
}

// Publisher is a watermill publisher that appends all the messages of a call to a stream in
// one pipeline and reports which failed. It implements [publisher.BatchPublisher]. It is
// safe for concurrent use.
type Publisher struct {
	client     redis.UniversalClient
	ownClient  bool
	maxLen     int64
	timeout    time.Duration
	marshaller wmredis.Marshaller

	// mu is held for reading by each publish and for writing by Close, which thereby waits
	// for the publishes in progress.
	mu     sync.RWMutex
	closed bool
}

var _ publisher.BatchPublisher = (*Publisher)(nil)

var errClosed = errors.New("outbox: redispub publisher closed")

// New returns a [Publisher]. It checks the configuration but does not connect: the first
// publish does (see [Publisher]). Its errors name the field at fault.
func New(cfg Config) (*Publisher, error) {
	fail := func(field, format string, args ...any) (*Publisher, error) {
		return nil, fmt.Errorf("outbox: redispub.New: %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case cfg.URL == "" && cfg.Client == nil:
		return fail("URL", "required (or Client)")
	case cfg.URL != "" && cfg.Client != nil:
		return fail("Client", "set URL or Client, not both")
	case cfg.MaxLen < 0:
		return fail("MaxLen", "must not be negative, got %d (0 keeps every entry)", cfg.MaxLen)
	case cfg.Timeout < 0:
		return fail("Timeout", "must not be negative, got %v", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Marshaller == nil {
		cfg.Marshaller = wmredis.DefaultMarshallerUnmarshaller{}
	}
	p := &Publisher{client: cfg.Client, maxLen: cfg.MaxLen, timeout: cfg.Timeout, marshaller: cfg.Marshaller}
	if p.client == nil {
		opts, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return fail("URL", "%v", err)
		}
		p.client, p.ownClient = redis.NewClient(opts), true
	}
	return p, nil
}

// Client returns the client the publisher publishes through.
func (p *Publisher) Client() redis.UniversalClient { return p.client }

// Publish implements message.Publisher: it publishes msgs as one batch (see PublishBatch).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.PublishBatch(topic, msgs)
}

// PublishBatch implements [publisher.BatchPublisher]: one pipeline of XADDs to the stream
// named topic, in the order given. After a message that cannot be marshaled, the later
// messages of its key are not sent; after one that Redis refused, they are reported failed.
// When some messages fail it returns a [*publisher.BatchError] naming them.
func (p *Publisher) PublishBatch(topic string, msgs []*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	b := publisher.NewBatchOutcome(msgs)
	cmds := make([]*redis.StringCmd, len(msgs))
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	pipe := p.client.Pipeline()
	enc := p.encoder(topic, len(msgs))
	for i, msg := range msgs {
		if b.Held(i) {
			continue
		}
		args, err := enc.xadd(msg)
		if err != nil {
			b.Fail(i, publisher.Permanent(fmt.Errorf("marshal message %s: %w", msg.UUID, err)))
			continue
		}
		cmds[i] = redis.NewStringCmd(ctx, args...)
		_ = pipe.Process(ctx, cmds[i])
	}
	if pipe.Len() > 0 {
		// Exec returns the first command's error; each command has its own.
		if _, err := pipe.Exec(ctx); err != nil && !hasCmdError(cmds) {
			return fmt.Errorf("outbox: redisstream: %w", err)
		}
	}
	for i, cmd := range cmds {
		if cmd != nil && cmd.Err() != nil {
			b.Fail(i, cmd.Err())
		}
	}
	return b.Err()
}

// xaddEncoder builds the XADD commands of one batch. The arguments of all of them share one
// slice, so that a message costs a few allocations rather than the map and the argument
// slice of each.
type xaddEncoder struct {
	custom wmredis.Marshaller // nil: watermill-redisstream's default format, encoded here
	topic  string
	head   []any // XADD stream [MAXLEN ~ n] *
	args   []any
}

func (p *Publisher) encoder(topic string, n int) *xaddEncoder {
	e := &xaddEncoder{topic: topic, head: []any{"xadd", topic}}
	if p.maxLen > 0 {
		e.head = append(e.head, "maxlen", "~", p.maxLen)
	}
	e.head = append(e.head, "*")
	switch p.marshaller.(type) {
	case wmredis.DefaultMarshallerUnmarshaller, *wmredis.DefaultMarshallerUnmarshaller:
	default:
		e.custom = p.marshaller
		return e
	}
	e.args = make([]any, 0, n*(len(e.head)+6))
	return e
}

// xadd returns the arguments of the XADD that appends msg.
func (e *xaddEncoder) xadd(msg *message.Message) ([]any, error) {
	if e.custom != nil {
		values, err := e.custom.Marshal(e.topic, msg)
		if err != nil {
			return nil, err
		}
		// Sorted, so that entries share their fields' order (see below).
		args := append(make([]any, 0, len(e.head)+2*len(values)), e.head...)
		for _, k := range slices.Sorted(maps.Keys(values)) {
			args = append(args, k, values[k])
		}
		return args, nil
	}
	// What DefaultMarshallerUnmarshaller.Marshal gives, its fields always in this order: a
	// stream stores entries with its first entry's fields in their order without the names.
	if msg.Metadata.Get(wmredis.UUIDHeaderKey) != "" {
		return nil, fmt.Errorf("metadata %s is reserved by watermill for message UUID", wmredis.UUIDHeaderKey)
	}
	var md []byte
	if len(msg.Metadata) > 0 {
		var err error
		if md, err = msgpack.Marshal(msg.Metadata); err != nil { // as watermill-redisstream does
			return nil, err
		}
	}
	start := len(e.args)
	e.args = append(e.args, e.head...)
	e.args = append(e.args, wmredis.UUIDHeaderKey, msg.UUID, "metadata", md, "payload", []byte(msg.Payload))
	return e.args[start:len(e.args):len(e.args)], nil
}

// hasCmdError reports whether the failure of a pipeline shows in its commands.
func hasCmdError(cmds []*redis.StringCmd) bool {
	for _, cmd := range cmds {
		if cmd != nil && cmd.Err() != nil {
			return true
		}
	}
	return false
}

// Close implements message.Publisher: it waits for the batches in progress, then closes the
// client if New opened it.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.ownClient {
		return p.client.Close()
	}
	return nil
}
