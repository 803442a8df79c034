package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
)

// Whether a dispatcher reads the change log, as far as the database shows. It does not show
// whether dispatchers poll: a polling dispatcher holds no connection or lock of its own, so
// "none" is all it can say when no reader is connected.
const (
	modeLog     = "log"     // a reader reads the change log
	modeNone    = "none"    // no reader reads it: dispatchers poll, or none runs
	modeUnknown = "unknown" // the log's state could not be read
)

// statusReport is what status prints.
type statusReport struct {
	Database string `json:"database"`
	Table    string `json:"table"`
	Pending  int64  `json:"pending"`
	// OldestPending is when the oldest pending message was written; its age is the lag.
	OldestPending           time.Time `json:"oldest_pending,omitzero"`
	OldestPendingAgeSeconds float64   `json:"oldest_pending_age_seconds"`
	Parked                  int64     `json:"parked"`
	// ParkedKeys are the keys with parked messages, the oldest first (at most ten).
	ParkedKeys          []parkedKey `json:"parked_keys,omitempty"`
	DeliveredLastMinute int64       `json:"delivered_last_minute"`
	Log                 logReport   `json:"log"`
}

type parkedKey struct {
	Topic  string `json:"topic"`
	Key    string `json:"key"`
	Parked int64  `json:"parked"`
}

// logReport is the state of the change log reader.
type logReport struct {
	Mode string `json:"mode"`
	// Reason says why the mode is not "log".
	Reason   string               `json:"reason,omitempty"`
	Postgres *pgstore.LogState    `json:"postgres,omitempty"`
	MySQL    *mysqlstore.LogState `json:"mysql,omitempty"`

	lines []field // the database's details, for text output
}

func setupStatus(*flag.FlagSet) func(context.Context, *app) error {
	return func(ctx context.Context, a *app) error {
		if err := a.open(ctx, true, true); err != nil {
			return err
		}
		stats, err := a.st.Stats(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		r := statusReport{
			Database:            a.be.name,
			Table:               a.table,
			Pending:             stats.Pending,
			OldestPending:       stats.OldestPending,
			Parked:              stats.Parked,
			DeliveredLastMinute: stats.DeliveredLastMinute,
		}
		var keys []string
		for _, k := range stats.ParkedKeys {
			r.ParkedKeys = append(r.ParkedKeys, parkedKey{Topic: k.Topic, Key: k.Key, Parked: k.Parked})
			keys = append(keys, fmt.Sprintf("%s/%s (%d)", k.Topic, k.Key, k.Parked))
		}
		if !stats.OldestPending.IsZero() {
			r.OldestPendingAgeSeconds = max(0, now.Sub(stats.OldestPending).Seconds())
		}
		var logErr error
		switch {
		case !a.st.Capabilities().ChangeLog:
			r.Log = logReport{Mode: modeNone, Reason: fmt.Sprintf("the %s store reads no change log: dispatchers poll it, if any runs", a.st.Capabilities().Name)}
		default:
			if r.Log, logErr = a.be.inspectLog(ctx, a.db, a.g.table); logErr != nil {
				r.Log = logReport{Mode: modeUnknown, Reason: trimPrefix(logErr)}
			}
		}
		if err := a.print(r, func(p *printer) {
			lag := "none pending"
			if !r.OldestPending.IsZero() {
				lag = fmt.Sprintf("%s (oldest pending written %s)", age(now.Sub(r.OldestPending)), r.OldestPending.UTC().Format(time.RFC3339))
			}
			p.fields(
				field{"database", r.Database},
				field{"table", r.Table},
				field{"pending", strconv.FormatInt(r.Pending, 10)},
				field{"lag", lag},
				field{"parked", strconv.FormatInt(r.Parked, 10)},
				field{"parked keys", strings.Join(keys, ", ")},
				field{"delivered last minute", strconv.FormatInt(r.DeliveredLastMinute, 10)},
				field{"log mode", r.Log.Mode},
				field{"why not log", r.Log.Reason},
			)
			p.fields(r.Log.lines...)
		}); err != nil {
			return err
		}
		if logErr != nil {
			return fmt.Errorf("read the change log's state: %w", logErr)
		}
		return nil
	}
}

func postgresLog(ctx context.Context, db *sql.DB, table string) (logReport, error) {
	s, err := pgstore.InspectLog(ctx, db, table)
	if err != nil {
		return logReport{}, err
	}
	r := logReport{Mode: modeNone, Postgres: s}
	switch {
	case s.Active:
		r.Mode = modeLog
	case s.Problem != "":
		r.Reason = s.Problem
	default:
		r.Reason = fmt.Sprintf("no log reader is connected to replication slot %s: no dispatcher runs, or it polls (its logs say why)", s.Slot)
	}
	slot := s.Slot + " (missing)"
	if s.SlotExists {
		slot = s.Slot + " (inactive)"
		if s.Active {
			slot = fmt.Sprintf("%s (active, server process %d)", s.Slot, s.ActivePID)
		}
	}
	r.lines = []field{{"wal_level", s.WALLevel}, {"replication slot", slot}}
	if s.SlotExists {
		r.lines = append(r.lines,
			field{"slot lag", byteSize(s.LagBytes) + " behind the end of the WAL"},
			field{"slot retains", byteSize(s.RetainedBytes) + " of WAL"},
			field{"slot wal_status", s.WALStatus})
	}
	if s.Active && s.Problem != "" {
		r.lines = append(r.lines, field{"log problem", s.Problem})
	}
	return r, nil
}

func mysqlLog(ctx context.Context, db *sql.DB, table string) (logReport, error) {
	s, err := mysqlstore.InspectLog(ctx, db, table)
	if err != nil {
		return logReport{}, err
	}
	r := logReport{Mode: modeNone, MySQL: s}
	reader := s.LockName + " (free)"
	switch {
	case s.ReaderConnection != 0:
		r.Mode = modeLog
		reader = fmt.Sprintf("%s held by connection %d", s.LockName, s.ReaderConnection)
	case s.Problem != "":
		r.Reason = s.Problem
	default:
		r.Reason = fmt.Sprintf("no log reader holds the lock %s: no dispatcher runs, or it polls (its logs say why)", s.LockName)
	}
	binlog := "off"
	if s.BinlogOn {
		binlog = "on, format " + s.BinlogFormat
	}
	r.lines = []field{{"binlog", binlog}, {"reader lock", reader}}
	if p := s.Position; p != nil {
		pos := fmt.Sprintf("%s:%d", p.File, p.Pos)
		if p.GTIDSet != "" {
			pos += ", GTID " + p.GTIDSet
		}
		lag := "unknown"
		if s.LagBytes >= 0 {
			lag = byteSize(s.LagBytes) + " behind the end of the binlog"
		}
		r.lines = append(r.lines,
			field{"stored position", pos},
			field{"position updated", fmt.Sprintf("%s ago (%s)", age(time.Since(p.UpdatedAt)), p.UpdatedAt.Format(time.RFC3339))},
			field{"position lag", lag})
	} else {
		r.lines = append(r.lines, field{"stored position", "none in " + s.PositionTable})
	}
	if r.Mode == modeLog && s.Problem != "" {
		r.lines = append(r.lines, field{"log problem", s.Problem})
	}
	return r, nil
}
