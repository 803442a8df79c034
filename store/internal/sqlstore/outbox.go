package sqlstore

import (
	"context"
	"database/sql"

	"github.com/outboxgo/outbox/store"
)

// Outbox is what an application and an operator call on a SQL store: each store package's
// Store embeds it. The rest of the [Store], which a dispatcher drives, is its Engine.
type Outbox struct {
	s *Store
}

var (
	_ store.Outbox   = Outbox{}
	_ store.Operator = Outbox{}
	_ store.Outbox   = (*Store)(nil)
)

// Outbox returns the calls of s that applications and operators make.
func (s *Store) Outbox() Outbox { return Outbox{s} }

// Engine is the store itself: a dispatcher drives it.
func (s *Store) Engine() store.Engine { return s }

// EngineOf is the engine of a store of this module, for the store packages' tests: a store
// package's New passes straight in: sqlstore.EngineOf(pgstore.New(db, cfg)).
func EngineOf[O store.Outbox](o O, err error) (*Store, error) { return store.EngineAs[*Store](o, err) }

// Engine is the part of the store that a dispatcher and the operator tools drive.
func (o Outbox) Engine() store.Engine { return o.s }

// Write stores msgs in db, which should be the caller's transaction; see [store.Engine].
func (o Outbox) Write(ctx context.Context, db store.Execer, msgs ...store.Message) error {
	return o.s.Write(ctx, db, msgs...)
}

// Migrate creates or updates the outbox table (and, where the database has a change log,
// what reading it needs), under a lock: several instances may run it at once.
func (o Outbox) Migrate(ctx context.Context) error { return o.s.Migrate(ctx) }

// Migrations are the schema steps that Migrate applies, in order, for a migration tool.
func (o Outbox) Migrations() ([]Migration, error) { return o.s.Migrations() }

// Check reports whether the outbox is usable: the database reachable, the table migrated and
// the rights in place.
func (o Outbox) Check(ctx context.Context) error { return o.s.Check(ctx) }

// List returns stored messages, oldest first.
func (o Outbox) List(ctx context.Context, p *store.ListParams) (*store.ListResult, error) {
	return o.s.List(ctx, p)
}

// Stats counts the messages by state; see [store.Operator].
func (o Outbox) Stats(ctx context.Context) (*store.Stats, error) { return o.s.Stats(ctx) }

// Requeue makes parked messages pending again; see [store.Operator].
func (o Outbox) Requeue(ctx context.Context, p *store.RequeueParams) (int64, error) {
	return o.s.Requeue(ctx, p)
}

// Purge deletes delivered messages past their retention; see [store.Operator].
func (o Outbox) Purge(ctx context.Context, p *store.PurgeParams) (int64, error) {
	return o.s.Purge(ctx, p)
}

// DB is the database handle the store was made with.
func (o Outbox) DB() *sql.DB { return o.s.db }

// Table is the quoted, qualified outbox table name, for your own queries.
func (o Outbox) Table() string { return o.s.t.String() }
