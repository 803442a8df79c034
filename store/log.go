package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrLogUnavailable is returned, wrapped with the reason, by [LogReader.OpenLog] and
// [LogStream.Next] when the database's change log cannot be read: a server setting, a
// missing privilege, a dropped replication slot or a purged log position. Dispatchers then
// poll, and try the log again later.
var ErrLogUnavailable = errors.New("outbox: change log unavailable")

// LogUnavailable returns an error wrapping ErrLogUnavailable that says why.
func LogUnavailable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrLogUnavailable, fmt.Sprintf(format, args...))
}

// LogUnavailableReason is the reason an error from LogUnavailable gives, without the
// sentinel's own words.
func LogUnavailableReason(err error) string {
	return strings.TrimPrefix(err.Error(), ErrLogUnavailable.Error()+": ")
}

// LogReader is implemented by stores that read written messages from the database's change
// log (Postgres logical replication, the MySQL binlog) as their transactions commit, so that
// nothing polls for them. Capabilities().ChangeLog says whether a store can.
//
// One reader at a time reads an outbox: the others wait as standbys and take over when it
// goes away.
type LogReader interface {
	// OpenLog waits until this instance is the outbox's log reader (a standby meanwhile,
	// which it reports through o.Status), and opens the log where the batches recorded
	// before end. It returns an error wrapping ErrLogUnavailable when the log cannot be read
	// at all, and other errors for failures worth a retry (a lost connection).
	OpenLog(ctx context.Context, o LogOptions) (LogStream, error)
}

// LogOptions is how a dispatcher reads the change log.
type LogOptions struct {
	// BatchSize is the most messages per batch; 0 means DefaultLogBatchSize.
	BatchSize int
	// DeleteDelivered has recording delete delivered messages instead of marking them, as
	// [MarkDeliveredParams.Delete] does.
	DeleteDelivered bool
	// Status, when set, receives the reader's status whenever it changes, and at least every
	// few seconds while it reads.
	Status func(LogStatus)
}

// DefaultLogBatchSize is the default of LogOptions.BatchSize.
const DefaultLogBatchSize = 500

// Batch returns BatchSize, or its default when unset.
func (o LogOptions) Batch() int {
	if o.BatchSize > 0 {
		return o.BatchSize
	}
	return DefaultLogBatchSize
}

// LogStream is an open change log, read a batch at a time: read ([LogStream.Next]), filter
// ([LogStream.Filter]), publish (the dispatcher), record ([LogStream.Record]). Next and
// Filter are called from one goroutine; Record from another, so that a batch is recorded
// while the next one is read and published.
type LogStream interface {
	// Next waits for messages of committed transactions and returns those at hand, in commit
	// order, at most a batch of them. A transaction larger than a batch comes in parts. It
	// returns an error wrapping ErrLogUnavailable when the log can no longer be read (a
	// dropped slot, a purged position).
	Next(ctx context.Context) (*LogBatch, error)
	// Filter looks the batch's messages up in the table and sets its Publish: those still
	// pending that polling does not hold and that no held message of their key precedes. The
	// others are left to polling when the batch is recorded. Every earlier batch that
	// [LogBatch.HoldsKeys] must be recorded first.
	Filter(ctx context.Context, b *LogBatch) error
	// Record records the outcome of batches, in the order Next returned them, in one
	// transaction, and moves the log position past them. It runs to its end even if ctx
	// ends: what the broker acknowledged must be marked.
	Record(ctx context.Context, bs []*LogBatch) error
	// Close ends the reading, which a standby then takes over. Batches not recorded are read
	// again by the next reader.
	Close() error
}

// LogBatch is a batch of messages read from the change log, and what became of them.
type LogBatch struct {
	// Publish is what [LogStream.Filter] found to publish, in commit order.
	Publish []ClaimedMessage
	// HeldBack is set by Filter when it left messages to polling (behind a held message of
	// their key) or found some held: recording them holds their keys back.
	HeldBack bool
	// Outcome is what became of Publish, as the dispatcher tells it.
	Outcome LogOutcome
	// Read is the stream's own record of the batch: its messages, where it ends in the log.
	Read any
}

// HoldsKeys reports whether recording the batch will hold keys back (failed, handed-over or
// held messages): the next batch may be filtered only after it is recorded.
func (b *LogBatch) HoldsKeys() bool {
	o := b.Outcome
	return b.HeldBack || len(o.Failures) > 0 || len(o.Unattempted) > 0 || len(o.Delivered)+len(o.Failures) < len(b.Publish)
}

// LogOutcome is what became of the messages of a [LogBatch]'s Publish. A message in none of
// its lists is handed over to polling, as a message in Unattempted is.
type LogOutcome struct {
	// Delivered messages were acknowledged by the publisher.
	Delivered []string
	// Failures are failed attempts, recorded as [Engine.Fail] records them: the message is
	// retried by polling after its RetryAfter, or parked.
	Failures []Failure
	// Unattempted messages were not published (they wait behind a failure of their key);
	// polling publishes them, in order.
	Unattempted []string
}

// LogStatus is the state of a [LogReader].
type LogStatus struct {
	// Reading is true while this instance reads the log, false while it waits as a standby.
	// A reader reports it only once the server streams the log to it (it sent a first
	// message: an event, a keepalive), so that a stream the server refuses a moment after it
	// starts (a purged position, a dropped slot) is never reported as read.
	Reading bool
	// CaughtUp is the last time at which the reader had handed over and recorded every
	// message committed before it. Messages written before it (less a margin for long
	// transactions) that are still pending were missed by the log: written before the log
	// position existed, or while the dispatchers polled. A sweep claims those.
	CaughtUp time.Time
	// LagBytes is how far the reader's confirmed position is behind the end of the log, in
	// bytes (Postgres WAL, MySQL binlog), or -1 when not known.
	LagBytes int64
}
