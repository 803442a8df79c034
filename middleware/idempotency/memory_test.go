package idempotency_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/middleware/idempotency"
)

func TestMemoryDropsDuplicates(t *testing.T) {
	t.Parallel()
	m := idempotency.NewMemory()
	var calls atomic.Int64
	h := m.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		calls.Add(1)
		_, ok := idempotency.TxFromContext(msg.Context())
		require.False(t, ok, "no transaction under Memory")
		return nil, nil
	})
	for range 3 {
		_, err := h(newMsg("m-1"))
		require.NoError(t, err)
	}
	_, err := h(newMsg("m-2"))
	require.NoError(t, err)
	require.EqualValues(t, 2, calls.Load())
	require.True(t, m.Processed("m-1"))
	require.False(t, m.Processed("m-3"))
}

func TestMemoryConcurrentDeliveriesRunOnce(t *testing.T) {
	t.Parallel()
	const n = 8
	var (
		m       idempotency.Memory // the zero value works
		calls   atomic.Int64
		started atomic.Int32
		all     = make(chan struct{})
		wg      sync.WaitGroup
		errs    = make(chan error, n)
	)
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		select { // hold the id until every delivery has begun
		case <-all:
		case <-time.After(30 * time.Second):
			return nil, errors.New("not all deliveries started")
		}
		return nil, nil
	})
	for range n {
		wg.Go(func() {
			if started.Add(1) == n {
				close(all)
			}
			_, err := h(newMsg("m-1"))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, calls.Load())
}

func TestMemoryForgetsFailedDeliveriesAndRefusesNoID(t *testing.T) {
	t.Parallel()
	m := idempotency.NewMemory()
	errBoom := errors.New("boom")
	fail := true
	var calls int
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		if fail {
			return nil, errBoom
		}
		return nil, nil
	})
	_, err := h(newMsg("m-1"))
	require.ErrorIs(t, err, errBoom)
	require.False(t, m.Processed("m-1"))
	fail = false
	for range 2 {
		_, err = h(newMsg("m-1"))
		require.NoError(t, err)
	}
	require.Equal(t, 2, calls)

	msg := newMsg("")
	msg.UUID = ""
	_, err = h(msg)
	require.ErrorIs(t, err, idempotency.ErrNoMessageID)
	require.Equal(t, 2, calls)
}
