package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// engine is an engine that is also its own outbox, as the SQL engines are.
type engine struct {
	store.Writer
	id int
}

func (engine) Claim(context.Context, *store.ClaimParams) (*store.ClaimResult, error) { return nil, nil }
func (engine) MarkDelivered(context.Context, *store.MarkDeliveredParams) error       { return nil }
func (engine) Fail(context.Context, *store.FailParams) error                         { return nil }
func (engine) Release(context.Context, *store.ReleaseParams) error                   { return nil }
func (engine) List(context.Context, *store.ListParams) (*store.ListResult, error)    { return nil, nil }
func (engine) Check(context.Context) error                                           { return nil }
func (engine) Capabilities() store.Capabilities                                      { return store.Capabilities{} }
func (e engine) Engine() store.Engine                                                { return e }

// wrapped observes an engine's calls by embedding it: its Engine method is the inner one's.
type wrapped struct{ engine }

// handle is what an application holds: an outbox that is no engine.
type handle struct{ e store.Engine }

func (h handle) Engine() store.Engine { return h.e }

func (h handle) Write(ctx context.Context, db store.Execer, msgs ...store.Message) error {
	return h.e.Write(ctx, db, msgs...)
}

func TestEngineOfTakesAWrapperAsItIs(t *testing.T) {
	inner := engine{id: 1}
	w := wrapped{inner}
	require.Equal(t, store.Engine(w), store.EngineOf(w), "a wrapper of an engine is driven itself, not the engine it wraps")
	require.Equal(t, store.Engine(inner), store.EngineOf(handle{inner}), "an outbox that is no engine hands over its Engine")
}

func TestEngineAsNamesWhatItCannotGive(t *testing.T) {
	inner := engine{id: 2}
	got, err := store.EngineAs[engine](handle{inner}, nil)
	require.NoError(t, err)
	require.Equal(t, inner, got)

	_, err = store.EngineAs[interface{ Migrate() }](handle{inner}, nil)
	require.ErrorContains(t, err, "the engine of store_test.handle is no interface { Migrate() }", "an engine without the calls asked for is an error, not a panic")

	failed := errors.New("cannot connect")
	_, err = store.EngineAs[engine](handle{}, failed)
	require.ErrorIs(t, err, failed, "New's error comes back as it is")
}
