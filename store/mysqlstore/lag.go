package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/outboxgo/outbox/store"
)

const (
	// sampleEvery is how often the reader checks its lock and reads the server's binlog end,
	// which tells when it caught up and how far behind it is.
	sampleEvery = 2 * time.Second
	// maxSamples bounds the samples waiting for the reader to pass them.
	maxSamples = 32
)

// sample is the server's binlog end at a time.
type sample struct {
	at    time.Time
	gtids map[uint32]gtid // MariaDB
	file  string
	pos   uint32
}

// covers reports whether a reader at p has read everything up to s: by GTID on MariaDB
// (which needs no privilege to sample), by file and offset on MySQL.
func (r *reader) covers(p position, s sample) bool {
	if r.mariadb {
		for d, g := range s.gtids {
			if p.gtids[d].seq < g.seq {
				return false
			}
		}
		return true
	}
	if p.file == "" {
		return false
	}
	c := compareFiles(p.file, s.file)
	return c > 0 || (c == 0 && p.pos >= s.pos)
}

// advance moves CaughtUp to the latest sample that the recorded position covers.
func (r *reader) advance() {
	done := r.done()
	for len(r.samples) > 0 && r.covers(done, r.samples[0]) {
		r.caughtUp = r.samples[0].at
		r.samples = r.samples[1:]
	}
}

func (r *reader) tick(ctx context.Context) error {
	if time.Since(r.heard) > silenceLimit {
		return fmt.Errorf("outbox: binlog stream: nothing from the server for %v, though it sends heartbeats every %v", silenceLimit, heartbeatPeriod)
	}
	r.advance()
	if time.Since(r.sampledAt) < sampleEvery-sampleEvery/10 {
		return nil
	}
	if err := r.sample(ctx); err != nil {
		return err
	}
	if r.streaming {
		r.status(store.LogStatus{Reading: true, CaughtUp: r.caughtUp, LagBytes: r.lag})
	}
	return nil
}

// sample checks that the reader still holds its lock, and reads the server's binlog end.
func (r *reader) sample(ctx context.Context) error {
	s := sample{at: time.Now()}
	var held sql.NullInt64
	var err error
	if r.mariadb {
		var g string
		err = r.lockConn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID(), @@GLOBAL.gtid_binlog_pos", r.lockName).Scan(&held, &g)
		if err == nil {
			s.gtids, err = parseGTIDs(g)
		}
	} else {
		err = r.lockConn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", r.lockName).Scan(&held)
	}
	if err != nil {
		return fmt.Errorf("outbox: log reader: check the lock: %w", err)
	}
	if held.Int64 != 1 {
		return errors.New("outbox: log reader: lost the lock (its session ended); another instance may read now")
	}
	if r.mariadb && r.last.file != "" && maps.Equal(s.gtids, r.last.gtids) {
		// Nothing was committed since the last sample: the binlog end has not moved (but for
		// a rotation, which writes no transaction), and an idle reader spares a query.
		s.file, s.pos = r.last.file, r.last.pos
	} else {
		s.file, s.pos, err = masterStatus(ctx, r.lockConn)
	}
	if err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			return store.LogUnavailable("%s: %v", privilegesNeeded, err)
		}
		return fmt.Errorf("outbox: log reader: read the binlog end: %w", err)
	}
	r.sampledAt, r.last = s.at, s
	if len(r.samples) == maxSamples {
		r.samples = r.samples[1:]
	}
	r.samples = append(r.samples, s)
	r.advance()
	r.lag = r.lagBytes(ctx, s.file, s.pos)
	return nil
}

// lagBytes is how far the recorded position is behind file:pos, or -1 when not known.
func (r *reader) lagBytes(ctx context.Context, file string, pos uint32) int64 {
	done := r.done()
	if done.file == "" || file == "" {
		return -1
	}
	switch c := compareFiles(done.file, file); {
	case c == 0:
		return max(0, int64(pos)-int64(done.pos))
	case c > 0:
		return 0
	}
	rows, err := r.lockConn.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return -1
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil || len(cols) < 2 {
		return -1
	}
	var lag int64
	found := false
	for rows.Next() {
		vals, err := scanStrings(rows, len(cols))
		if err != nil {
			return -1
		}
		name := vals[0].String
		size, err := strconv.ParseInt(vals[1].String, 10, 64)
		if err != nil {
			return -1
		}
		switch {
		case name == done.file:
			lag += size - int64(done.pos)
			found = true
		case name == file:
			lag += int64(pos)
		case compareFiles(name, done.file) > 0 && compareFiles(name, file) < 0:
			lag += size
		}
	}
	if rows.Err() != nil || !found {
		return -1
	}
	return max(0, lag)
}
