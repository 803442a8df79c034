package dispatcher

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Beside a log reader, an idle dispatcher claims once a look is due, and a full sweep takes
// the place of a look: it never adds a query of its own. Busy, it sweeps at every tick.
func TestSweepBesideTheLogTakesThePlaceOfALook(t *testing.T) {
	d := &Dispatcher{cfg: Config{BatchSize: 10, Lease: time.Second, SweepAfter: DefaultSweepAfter}}
	d.logs.mode.Store(int32(ModeLog))
	// at sets when the last look, the last full sweep and the busy spell were, from now, and
	// returns what the dispatcher claims: nil, a look at handed-over messages, or a full sweep.
	at := func(lookedAgo, sweptAgo, busyFor time.Duration) string {
		t.Helper()
		now := time.Now()
		d.logs.caughtUp.Store(now.Add(-time.Minute).UnixNano())
		d.logs.lookedAt.Store(now.Add(-lookedAgo).UnixNano())
		d.logs.sweptAt.Store(now.Add(-sweptAgo).UnixNano())
		d.logs.busyUntil.Store(now.Add(busyFor).UnixNano())
		switch p := d.claimParams(); {
		case p == nil:
			return "nothing"
		case p.OlderThan == handedOverOnly:
			return "look"
		default:
			require.Less(t, p.OlderThan, handedOverOnly)
			return "full sweep"
		}
	}

	// SweepAfter of a minute: a look every 2 s, a full sweep every 15 s at most.
	require.Equal(t, "nothing", at(time.Second, 16*time.Second, 0), "a due full sweep waits for the next look")
	require.Equal(t, "look", at(2100*time.Millisecond, 5*time.Second, 0))
	require.Equal(t, "full sweep", at(2100*time.Millisecond, 13500*time.Millisecond, 0),
		"the last look before 15 s pass is a full sweep")
	require.Equal(t, "full sweep", at(100*time.Millisecond, time.Second, time.Second), "busy: at every tick")

	d.cfg.SweepAfter = 4 * time.Second // a full sweep every second, more often than looks
	require.Equal(t, "full sweep", at(1100*time.Millisecond, 1100*time.Millisecond, 0))
	require.Equal(t, "nothing", at(500*time.Millisecond, 500*time.Millisecond, 0))

	d.logs.caughtUp.Store(0)
	d.logs.lookedAt.Store(0)
	require.Nil(t, d.claimParams(), "no sweep before the reader caught up once")
}
