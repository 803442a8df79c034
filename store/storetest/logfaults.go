package storetest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// testLogInterrupted: a reader whose server sessions end (a network fault, a server restart)
// returns an error worth a retry, not ErrLogUnavailable, which would send dispatchers to
// polling; reading again resumes where the recorded batches end. Nothing is lost, and each
// message is first handed over in commit order. What was handed over but not recorded when
// the sessions ended comes again: at most the batch being recorded and the one read
// meanwhile, at each interruption.
func testLogInterrupted(t *testing.T, h LogHarness) {
	require.NotNil(t, h.Interrupt, "LogHarness.Interrupt is required")
	const n, batch, rounds = 300, 50, 2
	var runs []*logConsumer
	delivered := func() []string {
		var all []string
		for _, c := range runs {
			all = append(all, c.delivered()...)
		}
		return all
	}
	waitDistinct := func(want int, run *logRun) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for len(distinct(delivered())) < want {
			if ended, err := run.ended(10 * time.Millisecond); ended {
				t.Fatalf("ReadLog returned before %d messages were delivered: %v", want, err)
			}
			require.False(t, time.Now().After(deadline), "the log reader delivered %d of %d messages", len(distinct(delivered())), want)
		}
	}
	// start reads as a dispatcher does after an error worth a retry: it tries again, as the
	// server may not have noticed yet that the last reader is gone (a slot still active).
	start := func() *logRun {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			c := &logConsumer{batch: batch}
			runs = append(runs, c)
			run := startLog(t, h.Store, c)
			for !c.reading() {
				ended, err := run.ended(10 * time.Millisecond)
				if !ended {
					require.False(t, time.Now().After(deadline), "the reader does not say that it reads")
					continue
				}
				require.NotErrorIs(t, err, store.ErrLogUnavailable, "the log is there")
				require.False(t, time.Now().After(deadline), "ReadLog keeps failing: %v", err)
				t.Logf("reading again failed, tried again: %v", err)
				break
			}
			if c.reading() {
				return run
			}
		}
	}

	// One writer writes all along, before, during and after each interruption; more is
	// written while no reader runs, and once it reads again, over a key of their own.
	written := writeInTurn(t, h.Harness, "i", n, 5*time.Millisecond)
	var more []string
	run := start()
	for round := 1; round <= rounds; round++ {
		waitDistinct(round*n/(rounds+2), run)
		h.Interrupt(t)
		ended, err := run.ended(20 * time.Second)
		require.True(t, ended, "ReadLog did not return within 20s of its sessions ending")
		require.Error(t, err)
		require.NotErrorIs(t, err, store.ErrLogUnavailable, "ended sessions are worth a retry")
		t.Logf("interrupted; ReadLog returned: %v", err)
		more = append(more, write(t, h.Harness, keyedMsgs(fmt.Sprintf("down%d", round), 10, "x")...)...)
		run = start()
		more = append(more, write(t, h.Harness, keyedMsgs(fmt.Sprintf("up%d", round), 10, "x")...)...)
	}
	want := written()
	waitDistinct(n+len(more), run)
	time.Sleep(300 * time.Millisecond) // a duplicate, if any, would show by now
	require.ErrorIs(t, run.stop(), context.Canceled)

	got := delivered()
	first := distinct(got)
	require.Len(t, first, n+len(more), "every message, and only these")
	require.Equal(t, want, only(first, want), "the writer's messages first handed over in commit order")
	require.Equal(t, more, only(first, more), "the messages of key x first handed over in commit order")
	require.LessOrEqual(t, len(got)-len(first), rounds*2*batch, "at most two batches again at each interruption")
	requireAllMarked(t, h.Harness)
}

// testLogLost: when the position the reader resumes from is lost (a dropped slot, a purged
// binlog), the first try says so with ErrLogUnavailable, so that dispatchers poll, and never
// says that it reads; the next starts from the log's current position. The messages written
// meanwhile are in no log that position carries: until a sweep delivers them, the reader
// must not publish a later message of their keys ahead of them. Then it publishes again.
func testLogLost(t *testing.T, h LogHarness) {
	require.NotNil(t, h.LoseLog, "LogHarness.LoseLog is required")
	ctx := context.Background()
	keyOf := map[string]string{}
	writeKeyed := func(payload string, n int, keyPrefix string) []string {
		msgs := keyedMsgs(payload, n, keyPrefix)
		ids := write(t, h.Harness, msgs...)
		for i, id := range ids {
			keyOf[id] = msgs[i].Key
		}
		return ids
	}
	c := &logConsumer{}
	run := startLog(t, h.Store, c)
	writeKeyed("a", 21, "k")
	c.waitFor(t, 21, 30*time.Second)
	require.ErrorIs(t, run.stop(), context.Canceled)
	require.NotEmpty(t, h.Position(t), "the reader keeps where it stands")

	h.LoseLog(t)
	lost := writeKeyed("b", 21, "k")

	refused := &logConsumer{}
	tryCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := ReadLog(tryCtx, h.Store.(store.LogReader), refused.consumer())
	cancel()
	require.ErrorIs(t, err, store.ErrLogUnavailable, "dispatchers poll while the position is lost")
	require.ErrorContains(t, err, "at its next try", "the error says that the reader starts again")
	require.False(t, refused.readingReported(), "a reader whose position is lost never says that it reads")
	require.Empty(t, refused.delivered())
	require.Empty(t, h.Position(t), "the lost position is forgotten, so that the next try starts from the current one")

	again := &logConsumer{}
	run = startLog(t, h.Store, again)
	require.Eventually(t, again.reading, 30*time.Second, 10*time.Millisecond, "the reader reads from the current position")
	require.Eventually(t, func() bool { return h.Position(t) != "" }, 10*time.Second, 10*time.Millisecond, "the new position is kept")

	// Later messages of the same keys, which the new position carries, and a few of keys of
	// their own, which nothing holds back.
	wrote := time.Now()
	after := append(writeKeyed("c", 21, "k"), writeKeyed("n", 4, "n")...)
	require.Eventually(t, func() bool { s, _ := again.status(); return s.CaughtUp.After(wrote) }, 30*time.Second, 20*time.Millisecond,
		"the reader reads past the later messages")
	byReader := again.delivered()
	for _, id := range byReader {
		require.Contains(t, after, id, "the reader publishes only what its position carries")
		require.Empty(t, ofKey(lost, keyOf, keyOf[id]),
			"message %s of key %s published ahead of the earlier messages of its key, which the log does not carry", id, keyOf[id])
	}
	pending, err := h.Store.List(ctx, &store.ListParams{State: store.Pending, Limit: 10000})
	require.NoError(t, err)
	require.Len(t, pending.Messages, len(lost)+len(after)-len(byReader), "what the reader did not publish is left to polling")

	// The sweep that a dispatcher runs beside its reader every few seconds: messages handed
	// over to polling, and those the reader catches up on, in write order.
	swept := sweep(t, h.Store)
	require.ElementsMatch(t, append(slices.Clone(lost), without(after, byReader)...), swept, "the sweep takes what the reader left, once")
	require.Equal(t, only(append(slices.Clone(lost), after...), swept), swept,
		"in write order: the messages the log does not carry before the later ones of their keys")

	// Caught up: the reader publishes again.
	last := writeKeyed("d", 21, "k")
	require.Eventually(t, func() bool { return len(only(again.delivered(), last)) == len(last) }, 30*time.Second, 10*time.Millisecond,
		"caught up, the reader publishes from the log again")
	requireAllMarked(t, h.Harness)
	time.Sleep(200 * time.Millisecond) // a duplicate, if any, would show by now
	require.ErrorIs(t, run.stop(), context.Canceled)
	requireOnceInOrder(t, append(without(after, swept), last...), again.delivered())
}

// ofKey is ids, in their order, less those whose key (keyOf) is not key.
func ofKey(ids []string, keyOf map[string]string, key string) []string {
	out := []string{}
	for _, id := range ids {
		if keyOf[id] == key {
			out = append(out, id)
		}
	}
	return out
}

// sweep claims as the sweep beside a log reader does when it claims only what the reader
// left (ClaimParams.OlderThan older than any message), marks it delivered, and returns the
// ids in claim order, until a claim finds nothing.
func sweep(t *testing.T, st store.Engine) []string {
	t.Helper()
	ctx := ctxFor(t)
	var out []string
	for {
		res, err := st.Claim(ctx, &store.ClaimParams{Limit: 100, Lease: time.Minute, OlderThan: 100 * 365 * 24 * time.Hour})
		require.NoError(t, err)
		if len(res.Messages) == 0 {
			return out
		}
		require.NoError(t, st.MarkDelivered(ctx, &store.MarkDeliveredParams{IDs: ids(res)}))
		out = append(out, ids(res)...)
	}
}

// keyedMsgs is n messages over 7 keys named prefix0 to prefix6 (fewer when n is less).
func keyedMsgs(payload string, n int, keyPrefix string) []store.Message {
	out := make([]store.Message, n)
	for i := range out {
		out[i] = msg("log", fmt.Sprintf("%s%d", keyPrefix, i%7), fmt.Sprintf("%s-%d", payload, i))
	}
	return out
}

// distinct is ids without repeats, each where it first comes.
func distinct(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// only is ids, in their order, less those not in keep.
func only(ids, keep []string) []string {
	out := []string{}
	for _, id := range ids {
		if slices.Contains(keep, id) {
			out = append(out, id)
		}
	}
	return out
}

// without is ids, in their order, less those in drop.
func without(ids, drop []string) []string {
	out := []string{}
	for _, id := range ids {
		if !slices.Contains(drop, id) {
			out = append(out, id)
		}
	}
	return out
}
