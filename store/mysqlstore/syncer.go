package mysqlstore

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/outboxgo/outbox/store"
)

const (
	// heartbeatPeriod is how often the server sends a heartbeat on an idle stream; after
	// silenceLimit without any event the connection is taken for dead.
	heartbeatPeriod = time.Second
	silenceLimit    = 10 * time.Second
)

func (r *reader) syncerConfig() (replication.BinlogSyncerConfig, error) {
	host, port := r.conn.Addr, 0
	if r.conn.Net != "unix" {
		h, p, err := net.SplitHostPort(r.conn.Addr)
		if err != nil {
			return replication.BinlogSyncerConfig{}, store.LogUnavailable("address %q: %v", r.conn.Addr, err)
		}
		host = h
		port, _ = strconv.Atoi(p)
	}
	dialer := &net.Dialer{Timeout: r.conn.Timeout, KeepAlive: 15 * time.Second}
	if dialer.Timeout == 0 {
		dialer.Timeout = 10 * time.Second
	}
	network, addr := r.conn.Net, r.conn.Addr
	flavor := gomysql.MySQLFlavor
	if r.mariadb {
		flavor = gomysql.MariaDBFlavor
	}
	return replication.BinlogSyncerConfig{
		// A replica id of its own, far above the ids servers are usually given: the server
		// drops an older connection that registers with the same id.
		ServerID:        1<<31 + rand.Uint32N(1<<31-1) + 1,
		Flavor:          flavor,
		Host:            host,
		Port:            uint16(port),
		User:            r.conn.User,
		Password:        r.conn.Passwd,
		TLSConfig:       r.conn.TLS,
		ParseTime:       true,
		HeartbeatPeriod: heartbeatPeriod,
		// A lost connection ends the reading; the dispatcher opens the log again, from the
		// stored position. go-mysql's own retries would resume from what it read instead.
		DisableRetrySync: true,
		// Bounds the events read ahead (and their memory: an event holds up to about
		// binlog_row_event_max_size of rows, or one larger row) while a batch is delivered.
		EventCacheCount: 128,
		Logger:          slog.New(debugHandler{r.log.Handler()}),
		Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		RowsEventDecodeFunc: r.decodeRows,
	}, nil
}

// debugHandler logs go-mysql's records at debug level: the reader returns the errors that
// matter, and go-mysql logs routine events (connecting, closing) as info and errors.
type debugHandler struct{ h slog.Handler }

func (d debugHandler) Enabled(ctx context.Context, _ slog.Level) bool {
	return d.h.Enabled(ctx, slog.LevelDebug)
}

func (d debugHandler) Handle(ctx context.Context, rec slog.Record) error {
	rec.Level = slog.LevelDebug
	return d.h.Handle(ctx, rec)
}

func (d debugHandler) WithAttrs(as []slog.Attr) slog.Handler { return debugHandler{d.h.WithAttrs(as)} }

func (d debugHandler) WithGroup(name string) slog.Handler { return debugHandler{d.h.WithGroup(name)} }

// startStream registers with the server as a replica and starts the binlog dump at start:
// by GTID on MariaDB (robust to a new primary; the server scans the binlog file for it), by
// file and offset on MySQL, whose GTIDs the reader does not track. This module's tests run
// MariaDB; the MySQL path shares all but the position.
func (r *reader) startStream(syncer *replication.BinlogSyncer, start position) (*replication.BinlogStreamer, error) {
	var (
		streamer *replication.BinlogStreamer
		err      error
	)
	if r.mariadb && (len(start.gtids) > 0 || start.file == "") {
		var set gomysql.GTIDSet
		set, err = gomysql.ParseMariadbGTIDSet(formatGTIDs(start.gtids))
		if err == nil {
			streamer, err = syncer.StartSyncGTID(set)
		}
	} else {
		streamer, err = syncer.StartSync(gomysql.Position{Name: start.file, Pos: start.pos})
	}
	if err == nil {
		return streamer, nil
	}
	switch binlogErrNumber(err) {
	case errAccessDenied, errSpecificDenied, errDBDenied, errTableDenied:
		// Without REPLICATION SLAVE, registering as a replica fails with "access denied".
		return nil, store.LogUnavailable("cannot read the binlog (%s): %v", privilegesNeeded, err)
	case errFatalBinlogRead:
		return nil, r.lostPosition(start, err)
	}
	return nil, fmt.Errorf("outbox: start reading the binlog: %w", err)
}

// streamError says what a failed stream means: a position the binlog no longer holds makes
// the log unavailable.
func (r *reader) streamError(err error) error {
	if binlogErrNumber(err) == errFatalBinlogRead {
		return r.lostPosition(r.read, err)
	}
	return fmt.Errorf("outbox: binlog stream: %w", err)
}
