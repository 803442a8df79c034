package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/store"
)

// status shows the change log's reader as the server sees it: set up by migrate but idle
// ("none"), then read by a dispatcher ("log").
func TestStatusShowsTheLogReader(t *testing.T) {
	for _, db := range setups[1:] { // the databases with a change log
		t.Run(db.name, func(t *testing.T) {
			t.Parallel()
			f := db.setup(t)
			f.ok(t, "migrate")
			f.write(t, store.Message{Topic: "orders", Payload: []byte("1")})

			st := f.status(t)
			require.Equal(t, modeNone, st.Log.Mode)
			require.Contains(t, st.Log.Reason, "no log reader")
			text := fields(t, f.ok(t, "status"))
			require.Equal(t, modeNone, text["log mode"])
			switch f.kind {
			case "postgres":
				pg := st.Log.Postgres
				require.NotNil(t, pg)
				require.Equal(t, "logical", pg.WALLevel)
				require.True(t, pg.SlotExists, "migrate created the slot")
				require.False(t, pg.Active)
				require.Empty(t, pg.Problem)
				require.GreaterOrEqual(t, pg.LagBytes, int64(0))
				require.Positive(t, pg.RetainedBytes)
				require.Contains(t, []string{"reserved", "extended"}, pg.WALStatus)
				require.Equal(t, pg.Slot+" (inactive)", text["replication slot"])
				require.Regexp(t, `^\d+(\.\d )?.*bytes?\)? behind the end of the WAL$`, text["slot lag"])
				require.Equal(t, pg.WALStatus, text["slot wal_status"])
			case "mysql":
				my := st.Log.MySQL
				require.NotNil(t, my)
				require.True(t, my.BinlogOn)
				require.Equal(t, "ROW", my.BinlogFormat)
				require.Zero(t, my.ReaderConnection)
				require.Empty(t, my.Problem)
				require.NotNil(t, my.Position, "migrate stored the position to start from")
				require.WithinDuration(t, time.Now(), my.Position.UpdatedAt, time.Minute)
				require.GreaterOrEqual(t, my.LagBytes, int64(0))
				require.Equal(t, "on, format ROW", text["binlog"])
				require.Equal(t, my.LockName+" (free)", text["reader lock"])
				require.Contains(t, text["stored position"], my.Position.File)
				require.Contains(t, text["position updated"], "ago")
			}

			pub := outboxtest.NewPublisher()
			d, err := dispatcher.New(f.st, pub, dispatcher.Config{Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			require.NoError(t, d.Start(context.Background()))
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				require.NoError(t, d.Stop(ctx))
			})
			require.Eventually(t, func() bool { return d.Mode() == dispatcher.ModeLog }, 15*time.Second, 10*time.Millisecond)

			// The reader connects a moment after the dispatcher's mode says so, at most.
			deadline := time.Now().Add(10 * time.Second)
			for st = f.status(t); st.Log.Mode != modeLog && time.Now().Before(deadline); st = f.status(t) {
				time.Sleep(20 * time.Millisecond)
			}
			require.Equal(t, modeLog, st.Log.Mode, "reason: %s", st.Log.Reason)
			require.Empty(t, st.Log.Reason)
			text = fields(t, f.ok(t, "status"))
			require.Equal(t, modeLog, text["log mode"])
			require.NotContains(t, text, "why not log")
			switch f.kind {
			case "postgres":
				require.True(t, st.Log.Postgres.Active)
				require.Positive(t, st.Log.Postgres.ActivePID)
				require.Contains(t, text["replication slot"], "(active, server process ")
			case "mysql":
				require.Positive(t, st.Log.MySQL.ReaderConnection)
				require.Contains(t, text["reader lock"], " held by connection ")
			}
		})
	}
}
