package dbtest

import (
	"context"
	"database/sql"

	"github.com/outboxgo/outbox/store"
)

// Store is the engine of a store of this module (store/internal/sqlstore) as tests outside
// store/ drive it: the engine contract, and the calls of it they use.
type Store interface {
	store.Engine
	store.Outbox
	store.Notifier
	store.LogReader
	store.Operator
	store.LeaseExtender
	Migrate(ctx context.Context) error
	DB() *sql.DB
	Table() string
	QualifiedName() string
}

// EngineOf is the engine of a store of this module; a store package's New passes straight in:
// dbtest.EngineOf(pgstore.New(db, cfg)).
func EngineOf[O store.Outbox](o O, err error) (Store, error) { return store.EngineAs[Store](o, err) }
