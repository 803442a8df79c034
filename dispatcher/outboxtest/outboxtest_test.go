package outboxtest_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newStore(t *testing.T) dbtest.Store {
	t.Helper()
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "app.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := dbtest.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st
}

// recorder stands in for *testing.T to see whether a helper fails the test.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = fmt.Sprintf(format, args...)
}

func TestRequireWritten(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	tx, err := st.DB().BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, st.Write(ctx, tx, store.Message{Topic: "payments", Key: "p-1", Payload: []byte("paid"), Headers: map[string]string{"type": "PaymentCompleted"}}))

	got := outboxtest.RequireWritten(t, st, tx, outboxtest.Want{Topic: "payments", Key: "p-1", Payload: []byte("paid"), Headers: map[string]string{"type": "PaymentCompleted"}})
	require.Equal(t, "p-1", got.Key)

	cases := map[string]outboxtest.Want{
		"WrongTopic":      {Topic: "refunds"},
		"WrongKey":        {Key: "p-2"},
		"WrongPayload":    {Payload: []byte("refunded")},
		"MissingHeader":   {Headers: map[string]string{"trace": "x"}},
		"WrongHeader":     {Headers: map[string]string{"type": "PaymentFailed"}},
		"WrongState":      {State: store.Delivered},
		"NotCommittedYet": {Topic: "payments"}, // read outside the transaction, below
	}
	for name, want := range cases {
		r := &recorder{TB: t}
		var db store.Querier = tx
		if name == "NotCommittedYet" {
			db = nil
		}
		outboxtest.RequireWritten(r, st, db, want)
		require.True(t, r.failed, name)
		require.Contains(t, r.msg, "want exactly 1", name)

		r = &recorder{TB: t}
		outboxtest.RequireNotWritten(r, st, db, want)
		require.False(t, r.failed, name)
	}
	r := &recorder{TB: t}
	outboxtest.RequireNotWritten(r, st, tx, outboxtest.Want{Topic: "payments"})
	require.True(t, r.failed)
	require.NoError(t, tx.Commit())
	outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Topic: "payments"})
}

func TestDrainPublishesDueMessagesInOrder(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	for i := range 250 {
		require.NoError(t, st.Write(ctx, st.DB(), store.Message{Topic: "t", Key: "k", Payload: []byte(fmt.Sprint(i))}))
	}
	pub := outboxtest.NewPublisher()
	require.Equal(t, 250, outboxtest.Drain(t, st, pub))
	got := pub.Messages("t")
	require.Len(t, got, 250)
	for i, m := range got {
		require.Equal(t, fmt.Sprint(i), string(m.Payload))
	}
	outboxtest.RequireNotWritten(t, st, nil, outboxtest.Want{})
	require.Equal(t, 0, outboxtest.Drain(t, st, pub), "nothing left")
}

func TestPublisherFailAndClose(t *testing.T) {
	pub := outboxtest.NewPublisher()
	pub.Fail = func(topic string, m *message.Message) error {
		if string(m.Payload) == "bad" {
			return errors.New("refused")
		}
		return nil
	}
	require.NoError(t, pub.Publish("a", message.NewMessage("1", []byte("ok"))))
	require.ErrorContains(t, pub.Publish("a", message.NewMessage("2", []byte("bad"))), "refused")
	require.NoError(t, pub.Publish("b", message.NewMessage("3", []byte("ok"))))
	require.Len(t, pub.Messages(""), 2)
	require.Len(t, pub.Messages("a"), 1)
	pub.Reset()
	require.Empty(t, pub.Messages(""))
	require.NoError(t, pub.Close())
	require.Error(t, pub.Publish("a", message.NewMessage("4", nil)))
}
