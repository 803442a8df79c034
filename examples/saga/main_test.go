package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// sarama starts one process-wide metrics goroutine that never ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

func TestSagaSettlesEveryOrder(t *testing.T) {
	require.NoError(t, run(context.Background(), config{Orders: 60, Timeout: 2 * time.Minute, Out: t.Output()}))
}

func TestSagaSettlesEveryOrderUnderChaos(t *testing.T) {
	require.NoError(t, run(context.Background(), config{Orders: 80, Rate: 200, Chaos: true, Timeout: 2 * time.Minute, Out: t.Output()}))
}

// The same chaos without the inbox charges orders twice, and the check says so: the duplicates
// are real, and the inbox is what absorbs them.
func TestCheckCatchesDuplicatesWithoutInbox(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), config{Orders: 40, Rate: 200, Chaos: true, Timeout: 2 * time.Minute,
		Out: io.MultiWriter(t.Output(), &out), withoutInbox: true})
	require.ErrorContains(t, err, "consistency check failed")
	require.Regexp(t, `order ord-\d+ is PAID with [2-9] payments \[COMPLETED COMPLETED`, out.String())
	require.Regexp(t, `its payment outcome was applied [2-9] times`, out.String())
}

func TestBadFlagsAreRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-orders", "0"}, "-orders must be positive (got 0)"},
		{[]string{"-orders", "many"}, `invalid value "many" for flag -orders`},
		{[]string{"-rate", "-1"}, "-rate must not be negative (got -1)"},
		{[]string{"-timeout", "0s"}, "-timeout must be positive (got 0s)"},
		{[]string{"-postgres", "postgres://u:secret@host:notaport/db"}, "-postgres: "},
		{[]string{"-orderz", "5"}, "flag provided but not defined: -orderz"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		require.ErrorContains(t, err, tc.want, tc.args)
		require.NotContains(t, err.Error(), "secret", tc.args)
	}
	_, err := parseFlags([]string{"-h"}, io.Discard)
	require.ErrorIs(t, err, flag.ErrHelp)

	cfg, err := parseFlags([]string{"-orders", "5", "-chaos"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, config{Orders: 5, Rate: 100, Chaos: true, Timeout: 2 * time.Minute}, cfg)

	// run checks its configuration too, before it starts anything.
	require.ErrorContains(t, run(context.Background(), config{Orders: -3, Timeout: time.Second}), "-orders must be positive (got -3)")
}
