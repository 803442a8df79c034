package store

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"time"
)

// Execer runs a statement. *sql.Tx, *sql.DB, *sql.Conn, bun.Tx, *bun.DB and bun.Conn all
// implement it; pass the transaction that writes your domain rows.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Querier runs a query. The same types as for [Execer] implement it.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// State is where a stored message stands.
type State string

const (
	// Pending messages wait to be published (or retried).
	Pending State = "pending"
	// Delivered messages were acknowledged by the publisher.
	Delivered State = "delivered"
	// Parked messages ran out of attempts; they wait for an operator to requeue them.
	Parked State = "parked"
)

// Outbox is an outbox as an application holds it: what a store package's New returns
// (pgstore.Store, mysqlstore.Store, sqlitestore.Store), offering the calls an application and
// an operator make (Write, Migrate, Check, Stats, Requeue, Purge). A dispatcher takes it and
// drives its [Engine].
type Outbox interface {
	Writer
	// Engine is the part of the store that a dispatcher and the operator tools drive.
	Engine() Engine
}

// EngineOf is the engine a dispatcher drives for o: o itself when it is an [Engine] (an
// engine, or a type that wraps one to observe or change its calls), o.Engine() otherwise.
func EngineOf(o Outbox) Engine {
	if e, ok := o.(Engine); ok {
		return e
	}
	return o.Engine()
}

// EngineAs is the engine of the outbox that a store's New returned, as E, for tools that
// drive more of it than the Engine contract (an operator command, tests); New's results pass
// straight in: store.EngineAs[myEngine](pgstore.New(db, cfg)).
func EngineAs[E any, O Outbox](o O, err error) (E, error) {
	var zero E
	if err != nil {
		return zero, err
	}
	e, ok := EngineOf(o).(E)
	if !ok {
		return zero, fmt.Errorf("outbox: the engine of %T is no %v", o, reflect.TypeFor[E]())
	}
	return e, nil
}

// Writer writes messages in the caller's transaction; see [Engine.Write].
type Writer interface {
	Write(ctx context.Context, db Execer, msgs ...Message) error
}

// Engine is the contract between a store and a dispatcher: claiming, recording and listing
// messages. Applications do not call it; they hold an [Outbox], which hands its engine to the
// dispatcher. A store of another database implements Engine (and, to be passed to a
// dispatcher, [Outbox], whose Engine method may return the engine itself). Implementations
// are safe for concurrent use and pass the conformance suite in package storetest.
type Engine interface {
	// Write stores msgs through db, which should be the caller's transaction. It validates
	// every message first and writes nothing if one is invalid. Writing no messages is a no-op.
	// Stores in this module add the trace context of ctx to the headers ([WithTraceContext]).
	Write(ctx context.Context, db Execer, msgs ...Message) error

	// Claim leases up to Limit due messages, oldest first, to the caller.
	Claim(ctx context.Context, params *ClaimParams) (*ClaimResult, error)
	// MarkDelivered records that the publisher acknowledged the messages.
	MarkDelivered(ctx context.Context, params *MarkDeliveredParams) error
	// Fail records failed attempts: each message becomes due again after its RetryAfter, or is
	// parked.
	Fail(ctx context.Context, params *FailParams) error
	// Release gives claimed messages back without counting an attempt.
	Release(ctx context.Context, params *ReleaseParams) error

	// List returns stored messages, oldest first.
	List(ctx context.Context, params *ListParams) (*ListResult, error)
	// Check reports whether the store is usable: reachable, and its schema in place
	// (ErrNotMigrated otherwise).
	Check(ctx context.Context) error
	// Capabilities declares what this store can do.
	Capabilities() Capabilities
}

// Capabilities declares the behaviour of a [Store] that a dispatcher or a test may rely on.
type Capabilities struct {
	// Name is the database's name, for logs: "sqlite", "postgres", "mysql".
	Name string
	// SkipLocked is true when concurrent claims pass over each other's rows instead of
	// waiting on them (Postgres, MySQL: claims take turns, read without locks and update only
	// rows no claim holds). Claims are correct either way.
	SkipLocked bool
	// CrossProcessNotify is true when the store's [Notifier] also hears messages written by
	// other processes (Postgres LISTEN/NOTIFY). Otherwise it hears only this process's writes.
	CrossProcessNotify bool
	// ChangeLog is true when the store implements [LogReader] for its database. Whether the
	// server's settings allow reading the log is known only when the log is opened (OpenLog).
	ChangeLog bool
}

// Notifier is implemented by stores that can tell a dispatcher that messages were written, so
// that it need not poll fast for low latency.
type Notifier interface {
	// Subscribe returns a channel that receives a value soon after messages are written
	// (signals coalesce), and a function that ends the subscription.
	Subscribe() (signals <-chan struct{}, cancel func())
}

// ClaimParams are the parameters of [Engine.Claim].
type ClaimParams struct {
	// Limit is the most messages to claim. Must be positive.
	Limit int
	// Lease is how long the claim holds. After it, the messages can be claimed again, which is
	// how the messages of a crashed dispatcher come back. Must be positive.
	Lease time.Duration
	// OlderThan, when positive, limits the claim to messages written at least OlderThan ago,
	// by the database's clock, and messages a log reader handed over to polling (failed, or
	// waiting behind a failure of their key): the sweep that runs beside a [LogReader].
	OlderThan time.Duration
	// Token, when set, identifies the claim instead of a token the store makes up. A caller
	// whose Claim fails cannot tell whether the claim took effect (a cancelled call may have
	// committed); with its own token it can give back whatever the claim took
	// ([ReleaseParams.All]) rather than wait for the lease. At most 36 characters (a UUID).
	Token string
}

// ClaimResult is the result of [Engine.Claim].
type ClaimResult struct {
	// Token identifies this claim; pass it to Fail and Release.
	Token string
	// Messages are the claimed messages in write order.
	Messages []ClaimedMessage
}

// ClaimedMessage is a message held by a claim.
type ClaimedMessage struct {
	Message
	// Attempts is the number of failed attempts recorded so far.
	Attempts int
}

// MarkDeliveredParams are the parameters of [Engine.MarkDelivered].
type MarkDeliveredParams struct {
	// IDs of the delivered messages. A message is marked even if its claim has expired: it was
	// acknowledged, and marking it spares a duplicate.
	IDs []string
	// Delete removes the messages instead of keeping them as delivered: about half the
	// database work of a mark, and nothing left to purge, at the cost of no delivered
	// messages for operators to look at.
	Delete bool
}

// FailParams are the parameters of [Engine.Fail].
type FailParams struct {
	// Token of the claim holding the messages. Failures of messages no longer held by it are
	// ignored.
	Token    string
	Failures []Failure
}

// Failure is one failed attempt.
type Failure struct {
	ID string
	// Error is stored as the message's last error.
	Error string
	// RetryAfter is how long the message waits before it is due again.
	RetryAfter time.Duration
	// Park moves the message out of the way instead: it is not retried until requeued, and
	// later messages of its key may proceed.
	Park bool
}

// LeaseExtender is implemented by stores whose claims can be extended while they are held,
// so that a dispatcher can claim with a short lease (a crashed dispatcher's messages come
// back within seconds) and still take as long as the broker needs to publish. The stores in
// this module implement it.
type LeaseExtender interface {
	// ExtendLease sets the lease of the pending messages still held by the claim to
	// params.Lease from now, by the database's clock, and returns how many it holds.
	ExtendLease(ctx context.Context, params *ExtendLeaseParams) (int64, error)
}

// ExtendLeaseParams are the parameters of [LeaseExtender.ExtendLease].
type ExtendLeaseParams struct {
	// Token of the claim.
	Token string
	// Lease is the new lease, from now. Must be positive.
	Lease time.Duration
}

// ReleaseParams are the parameters of [Engine.Release].
type ReleaseParams struct {
	// Token of the claim holding the messages.
	Token string
	IDs   []string
	// All releases every message the claim holds, whatever IDs says.
	All bool
}

// ListParams are the parameters of [Engine.List]. Zero fields do not filter.
type ListParams struct {
	// DB reads through the caller's transaction, to see messages it has not committed yet.
	// Nil reads through the store's own database handle.
	DB    Querier
	State State
	Topic string
	Key   string
	// Limit is the most messages to return. Defaults to 100.
	Limit int
}

// ListResult is the result of [Engine.List].
type ListResult struct {
	Messages []StoredMessage
}

// StoredMessage is a message with its delivery record.
type StoredMessage struct {
	Message
	State         State
	Attempts      int
	NextAttemptAt time.Time
	LastError     string
	DeliveredAt   time.Time
}

// Operator is implemented by stores that an operator can inspect and repair without writing
// SQL by hand. The stores in this module implement it.
type Operator interface {
	// Stats counts the messages by state.
	Stats(ctx context.Context) (*Stats, error)
	// Requeue makes parked messages pending again, due at once and with their attempts reset,
	// and returns how many it requeued.
	Requeue(ctx context.Context, params *RequeueParams) (int64, error)
	// Purge deletes delivered messages older than params.OlderThan, a bounded batch per
	// statement, and returns how many it deleted. Only one purge runs at a time on a database:
	// a purge that finds another one running returns 0 at once.
	Purge(ctx context.Context, params *PurgeParams) (int64, error)
}

// Stats is the result of [Operator.Stats].
type Stats struct {
	Pending int64
	Parked  int64
	// OldestPending is when the oldest pending message was written; zero when none is. The
	// time since then is the outbox's lag.
	OldestPending time.Time
	// DeliveredLastMinute counts the messages marked delivered in the last minute.
	DeliveredLastMinute int64
	// ParkedKeys are the keys with parked messages, the key of the oldest first: at most
	// MaxParkedKeys, found among the oldest thousand parked messages. With strict order per
	// key, each holds back the later messages of its key until an operator requeues or
	// deletes what is parked. Messages without a key are not counted here.
	ParkedKeys []ParkedKey
}

// MaxParkedKeys is the most keys [Stats].ParkedKeys lists.
const MaxParkedKeys = 10

// ParkedKey is a key with parked messages.
type ParkedKey struct {
	Topic string
	Key   string
	// Parked counts its parked messages among those looked at.
	Parked int64
}

// RequeueParams selects parked messages to requeue: by IDs, or by Topic and/or Key, or All.
// A request that selects nothing by accident (no field set) is refused.
type RequeueParams struct {
	IDs   []string
	Topic string
	Key   string
	All   bool
}

// PurgeParams are the parameters of [Operator.Purge].
type PurgeParams struct {
	// OlderThan is how long delivered messages are kept. Must be positive.
	OlderThan time.Duration
	// BatchSize bounds each DELETE. Defaults to 1000.
	BatchSize int
}

// Migration is one step of the outbox schema.
type Migration struct {
	// Version orders the migrations, from 1.
	Version int
	// Name describes the step, e.g. "create_outbox".
	Name string
	// SQL is the step's statements for the configured table name, separated by semicolons.
	SQL string
}

// DefaultTable is the outbox table's default name in the SQL stores of this module.
const DefaultTable = "outbox"
