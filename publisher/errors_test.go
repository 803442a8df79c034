package publisher_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/publisher"
)

func TestPermanent(t *testing.T) {
	require.Nil(t, publisher.Permanent(nil))
	base := errors.New("x")
	p := publisher.Permanent(base)
	require.True(t, publisher.IsPermanent(p))
	require.True(t, publisher.IsPermanent(fmt.Errorf("wrapped: %w", p)))
	require.ErrorIs(t, p, base)
	require.Equal(t, "x", p.Error(), "the mark does not change the message")
	require.False(t, publisher.IsPermanent(base))
	require.Same(t, p, publisher.Permanent(p), "marked once")
	require.False(t, publisher.IsPermanent(nil))
}

func TestBatchError(t *testing.T) {
	base := errors.New("x")
	for name, tc := range map[string]struct {
		failed map[string]error
		want   string
	}{
		"one":         {map[string]error{"a": base}, "outbox: 1 messages failed; a: x"},
		"sorted":      {map[string]error{"c": base, "a": base, "b": base}, "outbox: 3 messages failed; a: x; b: x; c: x"},
		"three shown": {map[string]error{"b": base, "a": base, "c": base, "d": base}, "outbox: 4 messages failed; a: x; b: x; c: x; and 1 more"},
	} {
		t.Run(name, func(t *testing.T) {
			be := &publisher.BatchError{Failed: tc.failed}
			require.EqualError(t, be, tc.want)
			var got *publisher.BatchError
			require.ErrorAs(t, fmt.Errorf("publish: %w", be), &got)
			require.Same(t, be, got)
		})
	}
}
