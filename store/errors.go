package store

import "errors"

// Errors returned by [Engine.Write] for messages it refuses. Nothing is written when one is
// returned, and the caller's transaction stays usable. Test with errors.Is.
var (
	ErrEmptyTopic      = errors.New("outbox: message topic is empty")
	ErrInvalidTopic    = errors.New("outbox: invalid message topic")
	ErrInvalidKey      = errors.New("outbox: invalid message key")
	ErrInvalidID       = errors.New("outbox: invalid message id")
	ErrPayloadTooLarge = errors.New("outbox: message payload too large")
	ErrInvalidHeader   = errors.New("outbox: invalid message header")
	ErrNilTx           = errors.New("outbox: nil transaction")
	// ErrDuplicateID is returned by [Engine.Write] for a message whose id the outbox already
	// holds. Nothing of that Write is stored, and the transaction stays usable.
	ErrDuplicateID = errors.New("outbox: a message with this id is already in the outbox")
)

// ErrInvalidTable is returned by store constructors for a table name that is not a plain SQL
// identifier (letters, digits and underscores, optionally schema-qualified).
var ErrInvalidTable = errors.New("outbox: invalid table name")

// ErrNotMigrated is returned by [Engine.Check] when the outbox table is missing or lacks
// columns: run the store's Migrate, or its migration files, first.
var ErrNotMigrated = errors.New("outbox: outbox table missing or not migrated")

// ErrPermission is returned by [Engine.Check] when the database user lacks a right the store
// needs on the outbox table (SELECT, INSERT, UPDATE, DELETE).
var ErrPermission = errors.New("outbox: database user lacks rights on the outbox table")

// ErrNoSelection is returned by [Operator.Requeue] for parameters that select no message: set
// IDs, Topic, Key or All.
var ErrNoSelection = errors.New("outbox: requeue needs IDs, a topic, a key, or All")
