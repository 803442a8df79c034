package dbtest

import (
	"context"
	"database/sql"
	"fmt"

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
func EngineOf[S store.Outbox](s S, err error) (Store, error) {
	if err != nil {
		return nil, err
	}
	e, ok := store.EngineOf(s).(Store)
	if !ok {
		return nil, fmt.Errorf("dbtest: %T has no engine of this module", s)
	}
	return e, nil
}
