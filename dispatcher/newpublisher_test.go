package dispatcher_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

// A constructor's nil result, its error ignored, is refused by New rather than failing every
// publish later: in an interface a nil pointer is not == nil.
func TestNewRefusesANilPublisher(t *testing.T) {
	f := setup(t)
	d, err := dispatcher.New(f.st, (*kafkapub.Publisher)(nil), dispatcher.Config{Logger: quiet()})
	require.EqualError(t, err, "outbox: dispatcher.New: publisher is nil: a nil *kafkapub.Publisher (was its constructor's error checked?)")
	require.Nil(t, d)

	for name, tc := range map[string]struct {
		st  store.Outbox
		pub message.Publisher
		err string
	}{
		"nil publisher":                               {f.st, nil, "publisher is nil"},
		"nil *kafkapub.Publisher":                     {f.st, (*kafkapub.Publisher)(nil), "publisher is nil"},
		"nil *kafkapub.Publisher as a BatchPublisher": {f.st, publisher.BatchPublisher((*kafkapub.Publisher)(nil)), "publisher is nil"},
		"nil store":                                   {nil, f.pub, "store is nil"},
		"nil *pgstore.Store":                          {(*pgstore.Store)(nil), f.pub, "store is nil: a nil *pgstore.Store"},
		"a store without an engine":                   {noEngine{}, f.pub, "store's engine is nil"},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := dispatcher.New(tc.st, tc.pub, dispatcher.Config{Logger: quiet()})
			require.ErrorContains(t, err, tc.err)
			require.Nil(t, d)
		})
	}
}

// noEngine is a store whose Engine is missing.
type noEngine struct{ store.Writer }

func (noEngine) Engine() store.Engine { return nil }
