package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrLogUnavailable is returned, wrapped with the reason, by [LogReader.ReadLog] when the
// database's change log cannot be read: a server setting, a missing privilege, a dropped
// replication slot or a purged log position. Dispatchers then poll, and try the log again
// later.
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
	// ReadLog waits until this instance is the outbox's log reader, then hands the messages of
	// committed transactions, in commit order, to c.Deliver and records the outcome, until ctx
	// ends or the log fails. It returns an error wrapping ErrLogUnavailable when the log
	// cannot be read at all, and other errors for failures worth a retry (a lost connection).
	ReadLog(ctx context.Context, c LogConsumer) error
}

// LogConsumer is what a [LogReader] hands messages to.
type LogConsumer struct {
	// Deliver publishes msgs, written in this order, and reports what became of each. The
	// reader records the outcome and moves its log position past them. It is called from one
	// goroutine at a time.
	Deliver func(ctx context.Context, msgs []ClaimedMessage) *LogOutcome
	// BatchSize is the most messages per Deliver call; 0 means DefaultLogBatchSize. A reader
	// may publish one batch while it records the one before, so a crash can send two batches
	// again.
	BatchSize int
	// DeleteDelivered has the reader delete delivered messages instead of marking them, as
	// [MarkDeliveredParams.Delete] does.
	DeleteDelivered bool
	// Status, when set, receives the reader's status whenever it changes, and at least every
	// few seconds while it reads.
	Status func(LogStatus)
}

// DefaultLogBatchSize is the default of LogConsumer.BatchSize.
const DefaultLogBatchSize = 500

// Batch returns BatchSize, or its default when unset.
func (c LogConsumer) Batch() int {
	if c.BatchSize > 0 {
		return c.BatchSize
	}
	return DefaultLogBatchSize
}

// LogOutcome is what became of the messages handed to [LogConsumer.Deliver]. A message in
// none of its lists is handed over to polling, as a message in Unattempted is.
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
