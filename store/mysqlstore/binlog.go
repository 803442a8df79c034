package mysqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-sql-driver/mysql"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/sqlstore"
)

const (
	// A batch holds up to LogConsumer.Batch() messages; it also ends when the stream has
	// nothing more at hand, or logBatchWait after its first message.
	logBatchWait = 1 * time.Millisecond
	// idleWait is how long the reader waits for more events before it takes the stream for
	// idle and hands over a batch that is not full.
	idleWait = 200 * time.Microsecond
	// heartbeatPeriod is how often the server sends a heartbeat on an idle stream; after
	// silenceLimit without any event the connection is taken for dead.
	heartbeatPeriod = time.Second
	silenceLimit    = 10 * time.Second
	// positionEvery is how often, at most, the position is stored after transactions that
	// wrote no outbox message (a batch stores it with its marks).
	positionEvery = time.Second
	// sampleEvery is how often the reader checks its lock and reads the server's binlog end,
	// which tells when it caught up and how far behind it is.
	sampleEvery = 2 * time.Second
	// standbyRetry is how often a standby tries to take the reader's lock.
	standbyRetry = time.Second
	// maxSamples bounds the samples waiting for the reader to pass them.
	maxSamples = 32
)

const privilegesNeeded = "the user needs the REPLICATION SLAVE and REPLICATION CLIENT privileges (on MariaDB: REPLICATION SLAVE and BINLOG MONITOR), e.g. GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <user>"

// MySQL error numbers the reader tells apart.
const (
	errNoSuchTable     = 1146
	errTableDenied     = 1142
	errDBDenied        = 1044
	errAccessDenied    = 1045
	errSpecificDenied  = 1227
	errSyntax          = 1064
	errFatalBinlogRead = 1236 // the binlog does not hold the requested position
)

// sqlErrNumber is the server's error number in err from go-sql-driver/mysql, or 0.
func sqlErrNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// querier is a *sql.Conn, *sql.DB or *sql.Tx.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// readLog is the store's change log reader: it streams the binlog as a replica would, from
// the position stored with the last batch, while it holds the outbox's log lock.
func readLog(ctx context.Context, s *sqlstore.Store, c store.LogConsumer, conn *mysql.Config) error {
	if conn == nil {
		return store.LogUnavailable("the binlog connection needs the database handle's connection settings: open the database with mysqlstore.Open")
	}
	switch conn.Net {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return store.LogUnavailable("the binlog connection dials tcp or unix sockets only, not %q", conn.Net)
	}
	lockConn, err := s.DB().Conn(ctx)
	if err != nil {
		return fmt.Errorf("outbox: log reader: %w", err)
	}
	defer lockConn.Close()
	r := &reader{s: s, c: c, conn: conn, lockConn: lockConn, log: s.Logger().With(slog.String("component", "outbox.binlog")), lag: -1}
	if err := r.identify(ctx); err != nil {
		return err
	}
	if err := r.waitForLead(ctx); err != nil {
		return err
	}
	defer r.unlock(ctx)
	if err := r.check(ctx); err != nil {
		return err
	}
	start, err := r.startPosition(ctx)
	if err != nil {
		return err
	}
	// A standby holds no second connection: the lookup session is the leader's.
	if r.lookup, err = lookupConn(ctx, s.DB()); err != nil {
		return err
	}
	defer func() {
		// Its session setting must not reach the pool.
		r.lookup.Raw(func(any) error { return driver.ErrBadConn })
		r.lookup.Close()
	}()
	return r.run(ctx, start)
}

// reader is one run of the binlog reader. Only the goroutine that called ReadLog uses it,
// except decodeRows, which go-mysql calls from its own goroutine and which reads only what
// identify set.
type reader struct {
	s        *sqlstore.Store
	c        store.LogConsumer
	conn     *mysql.Config
	lockConn *sql.Conn
	lookup   *sql.Conn // in READ COMMITTED: where logged rows are looked up (see lookupConn)
	log      *slog.Logger

	mariadb  bool
	schema   string // the outbox table's database
	fold     bool   // table names compare without case (lower_case_table_names)
	lockName string
	posTable string // quoted name of the position table
	cols     columnCache
	warned   uint64 // table id whose rows could not be mapped, logged once

	curFile string // position after the last event
	curPos  uint32
	read    position // after the last transaction read
	flushed position // after the last transaction whose messages are recorded

	// recording is the batch whose outcome is being recorded while the next one is read and
	// published: nil, or a channel that receives the result once.
	recording  chan error
	recordPos  position // stored with it
	recordHold bool     // it holds keys back: publish the next batch only after it

	inTx    bool
	txGTID  gtid
	txDom   uint32
	hasGTID bool
	txMsgs  []sqlstore.LogMessage
	txOther bool // the transaction changed something besides the outbox's own tables

	batch    []sqlstore.LogMessage
	batchTxs []batchTx // the transactions of the batch, in order
	queued   position  // stored with the last batch handed over: where batch is read again
	batchAt  time.Time
	dirty    bool // read moved past changes of other tables since the position was stored
	storedAt time.Time
	heard    time.Time // last event, or end of the last delivery

	samples   []sample
	sampledAt time.Time
	caughtUp  time.Time
	lag       int64
}

// batchTx is a transaction whose messages are in the batch.
type batchTx struct {
	end int      // index in the batch after its last message
	pos position // after it
}

// identify finds the outbox table's database, the server's flavour, and the lock name.
func (r *reader) identify(ctx context.Context) error {
	var (
		db      sql.NullString
		version string
		lower   int
	)
	if err := r.lockConn.QueryRowContext(ctx, "SELECT DATABASE(), VERSION(), @@lower_case_table_names").Scan(&db, &version, &lower); err != nil {
		return fmt.Errorf("outbox: log reader: %w", err)
	}
	r.mariadb = isMariaDB(version)
	r.fold = lower != 0
	r.schema = r.s.Schema()
	if r.schema == "" {
		r.schema = db.String
	}
	if r.schema == "" {
		return store.LogUnavailable("the DSN names no database and the table %s is not qualified", r.s.Table())
	}
	r.posTable = positionTable(r.schema, r.s.TableName())
	// The lock is named after the resolved database and table, not the configured name:
	// unqualified tables in different databases are different outboxes, and "app.outbox"
	// and "outbox" in database app are the same one.
	id := r.schema + "." + r.s.TableName()
	if r.fold {
		id = strings.ToLower(id)
	}
	h := fnv.New64a()
	h.Write([]byte("outbox:log:" + id))
	r.lockName = fmt.Sprintf("outbox_log_%x", h.Sum64()>>1)
	r.cols.lookup = r.lookupColumns
	return nil
}

func isMariaDB(version string) bool { return strings.Contains(version, "MariaDB") }

// positionTable is the quoted name of the reader's position table. Names are validated
// identifiers (letters, digits, underscores).
func positionTable(schema, table string) string {
	name := "`" + table + "_log_position`"
	if schema != "" {
		name = "`" + schema + "`." + name
	}
	return name
}

// waitForLead takes the outbox's log lock, waiting as a standby while another instance
// holds it.
func (r *reader) waitForLead(ctx context.Context) error {
	reported := false
	for {
		var got sql.NullInt64
		if err := r.lockConn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", r.lockName).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // the driver may report a query it cancelled as a bad connection
			}
			return fmt.Errorf("outbox: take the log reader lock: %w", err)
		}
		if got.Int64 == 1 {
			return nil
		}
		if !reported {
			r.status(store.LogStatus{LagBytes: -1})
			reported = true
		}
		timer := time.NewTimer(standbyRetry)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}

func (r *reader) unlock(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.lockConn.ExecContext(uctx, "DO RELEASE_LOCK(?)", r.lockName); err != nil {
		// Closing the session releases the lock.
		r.lockConn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

func (r *reader) status(st store.LogStatus) {
	if r.c.Status != nil {
		r.c.Status(st)
	}
}

// check tells why the binlog cannot be read, as an error wrapping store.ErrLogUnavailable.
func (r *reader) check(ctx context.Context) error {
	var (
		logBin, serverID sql.NullInt64
		format, rowImag  sql.NullString
	)
	err := r.lockConn.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, @@GLOBAL.server_id").
		Scan(&logBin, &format, &rowImag, &serverID)
	if err != nil {
		return fmt.Errorf("outbox: log reader: read server settings: %w", err)
	}
	switch {
	case logBin.Int64 != 1:
		return store.LogUnavailable("the server writes no binlog: start it with log_bin, binlog_format=ROW and binlog_row_image=FULL")
	case serverID.Int64 == 0:
		return store.LogUnavailable("server_id is 0: the server serves replicas only with a server_id")
	case !strings.EqualFold(format.String, "ROW"):
		return store.LogUnavailable("binlog_format is %s; the reader needs ROW", format.String)
	case !strings.EqualFold(rowImag.String, "FULL"):
		return store.LogUnavailable("binlog_row_image is %s; the reader needs FULL", rowImag.String)
	}
	for _, t := range []string{r.s.Table(), r.posTable} {
		_, err := r.lockConn.ExecContext(ctx, "SELECT 1 FROM "+t+" WHERE 1 = 0")
		switch sqlErrNumber(err) {
		case 0:
			if err != nil {
				return fmt.Errorf("outbox: log reader: %w", err)
			}
		case errNoSuchTable:
			return store.LogUnavailable("table %s does not exist: run Migrate, or the migration files", t)
		case errTableDenied, errDBDenied:
			return store.LogUnavailable("cannot read table %s: %v", t, err)
		default:
			return fmt.Errorf("outbox: log reader: %w", err)
		}
	}
	if _, _, err := masterStatus(ctx, r.lockConn); err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			return store.LogUnavailable("%s: %v", privilegesNeeded, err)
		}
		return fmt.Errorf("outbox: log reader: %w", err)
	}
	return nil
}

// masterStatus returns the end of the server's binlog. It needs REPLICATION CLIENT
// (BINLOG MONITOR).
func masterStatus(ctx context.Context, q querier) (file string, pos uint32, err error) {
	rows, err := q.QueryContext(ctx, "SHOW MASTER STATUS")
	if sqlErrNumber(err) == errSyntax { // MySQL 8.4 renamed it
		rows, err = q.QueryContext(ctx, "SHOW BINARY LOG STATUS")
	}
	if err != nil {
		return "", 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", 0, err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return "", 0, err
		}
		return "", 0, errors.New("the server reports no binlog position (log_bin is off)")
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "", 0, err
	}
	for i, c := range cols {
		switch strings.ToLower(c) {
		case "file":
			file = vals[i].String
		case "position":
			p, err := strconv.ParseUint(vals[i].String, 10, 32)
			if err != nil {
				return "", 0, fmt.Errorf("binlog position %q: %w", vals[i].String, err)
			}
			pos = uint32(p)
		}
	}
	return file, pos, rows.Err()
}

// position is a place in the binlog: where a transaction ends.
type position struct {
	gtids map[uint32]gtid // MariaDB: the last GTID in each domain
	file  string
	pos   uint32
}

// gtid is a MariaDB GTID without its domain.
type gtid struct {
	server uint32
	seq    uint64
}

func (p position) clone() position {
	p.gtids = maps.Clone(p.gtids)
	return p
}

// parseGTIDs reads a MariaDB GTID position, "domain-server-seq" per domain, comma separated.
func parseGTIDs(s string) (map[uint32]gtid, error) {
	out := map[uint32]gtid{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f := strings.Split(part, "-")
		if len(f) != 3 {
			return nil, fmt.Errorf("GTID %q is not domain-server-seq", part)
		}
		d, err1 := strconv.ParseUint(f[0], 10, 32)
		sv, err2 := strconv.ParseUint(f[1], 10, 32)
		seq, err3 := strconv.ParseUint(f[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("GTID %q: %w", part, err)
		}
		out[uint32(d)] = gtid{server: uint32(sv), seq: seq}
	}
	return out, nil
}

// formatGTIDs writes a MariaDB GTID position, ordered by domain.
func formatGTIDs(m map[uint32]gtid) string {
	domains := make([]uint32, 0, len(m))
	for d := range m {
		domains = append(domains, d)
	}
	slices.Sort(domains)
	parts := make([]string, len(domains))
	for i, d := range domains {
		parts[i] = fmt.Sprintf("%d-%d-%d", d, m[d].server, m[d].seq)
	}
	return strings.Join(parts, ",")
}

// binlogIndex is the number that ends a binlog file name, or -1.
func binlogIndex(name string) int64 {
	i := strings.LastIndexByte(name, '.')
	n, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// compareFiles orders binlog file names by their number.
func compareFiles(a, b string) int {
	ia, ib := binlogIndex(a), binlogIndex(b)
	if ia < 0 || ib < 0 {
		return strings.Compare(a, b)
	}
	switch {
	case ia < ib:
		return -1
	case ia > ib:
		return 1
	}
	return 0
}

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

// currentPosition is the end of the server's binlog now.
func currentPosition(ctx context.Context, q querier, mariadb bool) (position, error) {
	var p position
	if mariadb {
		var g string
		if err := q.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&g); err != nil {
			return p, err
		}
		var err error
		if p.gtids, err = parseGTIDs(g); err != nil {
			return p, err
		}
		// The file and offset only serve the lag until the stream tells them.
		p.file, p.pos, _ = masterStatus(ctx, q)
		return p, nil
	}
	var err error
	p.file, p.pos, err = masterStatus(ctx, q)
	return p, err
}

// loadPosition reads the stored position.
func loadPosition(ctx context.Context, q querier, table string) (p position, ok bool, err error) {
	var g string
	var pos int64
	err = q.QueryRowContext(ctx, "SELECT gtid_set, file, pos FROM "+table+" WHERE id = 1").Scan(&g, &p.file, &pos)
	if errors.Is(err, sql.ErrNoRows) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	if pos < 0 || pos > int64(^uint32(0)) {
		return p, false, fmt.Errorf("stored binlog offset %d is out of range", pos)
	}
	p.pos = uint32(pos)
	if p.gtids, err = parseGTIDs(g); err != nil {
		return p, false, fmt.Errorf("stored GTID position: %w", err)
	}
	return p, true, nil
}

func insertPosition(ctx context.Context, q querier, table string, p position, now time.Time) error {
	_, err := q.ExecContext(ctx, "INSERT IGNORE INTO "+table+" (id, gtid_set, file, pos, updated_at) VALUES (1, ?, ?, ?, ?)",
		formatGTIDs(p.gtids), p.file, int64(p.pos), now.UTC())
	return err
}

// recordStart is the store's Migrate hook: it records the server's current binlog position
// as the reader's start, when none is recorded and the server writes a binlog. Messages
// written before it are the sweep's.
func recordStart(ctx context.Context, s *sqlstore.Store, conn *sql.Conn) error {
	table := positionTable(s.Schema(), s.TableName())
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	if n > 0 {
		return nil
	}
	var (
		version string
		logBin  sql.NullInt64
	)
	if err := conn.QueryRowContext(ctx, "SELECT VERSION(), @@GLOBAL.log_bin").Scan(&version, &logBin); err != nil {
		return err
	}
	if logBin.Int64 != 1 {
		s.Logger().Info("the server writes no binlog (log_bin is off): dispatchers will poll")
		return nil
	}
	p, err := currentPosition(ctx, conn, isMariaDB(version))
	if err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			s.Logger().Warn("cannot read the binlog position; the log reader records it when it first runs", slog.String("hint", privilegesNeeded), slog.Any("error", err))
			return nil
		}
		return fmt.Errorf("read the binlog position: %w", err)
	}
	if err := insertPosition(ctx, conn, table, p, s.Now()); err != nil {
		return fmt.Errorf("record the binlog position in %s: %w", table, err)
	}
	return nil
}

// startPosition is the stored position, or the current one, stored now, when there is none.
func (r *reader) startPosition(ctx context.Context) (position, error) {
	p, ok, err := loadPosition(ctx, r.lockConn, r.posTable)
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: read %s: %w", r.posTable, err)
	}
	if ok && (len(p.gtids) > 0 || p.file != "") {
		return p, nil
	}
	cur, err := currentPosition(ctx, r.lockConn, r.mariadb)
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: read the binlog position: %w", err)
	}
	if ok {
		err = r.savePosition(ctx, r.lockConn, cur)
	} else {
		err = insertPosition(ctx, r.lockConn, r.posTable, cur, r.s.Now())
	}
	if err != nil {
		return p, fmt.Errorf("outbox: log reader: record the binlog position in %s: %w", r.posTable, err)
	}
	if p, ok, err = loadPosition(ctx, r.lockConn, r.posTable); err != nil || !ok {
		return p, fmt.Errorf("outbox: log reader: read %s: %v", r.posTable, err)
	}
	return p, nil
}

func (r *reader) savePosition(ctx context.Context, q querier, p position) error {
	_, err := q.ExecContext(ctx, "INSERT INTO "+r.posTable+" (id, gtid_set, file, pos, updated_at) VALUES (1, ?, ?, ?, ?)"+
		" ON DUPLICATE KEY UPDATE gtid_set = VALUES(gtid_set), file = VALUES(file), pos = VALUES(pos), updated_at = VALUES(updated_at)",
		formatGTIDs(p.gtids), p.file, int64(p.pos), r.s.Now().UTC())
	return err
}

// lookupColumns reads the outbox table's columns from information_schema.
func (r *reader) lookupColumns(ctx context.Context) (all, stored []string, err error) {
	rows, err := r.s.DB().QueryContext(ctx, "SELECT column_name, extra FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
		r.schema, r.s.TableName())
	if err != nil {
		return nil, nil, fmt.Errorf("outbox: log reader: read the columns of %s: %w", r.s.Table(), err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, extra string
		if err := rows.Scan(&name, &extra); err != nil {
			return nil, nil, err
		}
		all = append(all, name)
		if !strings.Contains(strings.ToUpper(extra), "VIRTUAL") {
			stored = append(stored, name)
		}
	}
	return all, stored, rows.Err()
}

// Tables of the binlog, as the reader sees them.
const (
	tableOther = iota
	tableOutbox
	tablePosition
)

func (r *reader) which(t *replication.TableMapEvent) int {
	eq := func(a []byte, b string) bool {
		if r.fold {
			return strings.EqualFold(string(a), b)
		}
		return string(a) == b
	}
	switch {
	case !eq(t.Schema, r.schema):
		return tableOther
	case eq(t.Table, r.s.TableName()):
		return tableOutbox
	case eq(t.Table, r.s.TableName()+"_log_position"):
		return tablePosition
	}
	return tableOther
}

// decodeRows decodes the rows of inserts into the outbox table only: the binlog holds every
// table of the server. go-mysql calls it from its own goroutine.
func (r *reader) decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	if e.Table == nil || e.Type() != replication.EnumRowsEventTypeInsert || r.which(e.Table) != tableOutbox {
		return nil
	}
	return e.DecodeData(pos, data)
}

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
		// A lost connection ends ReadLog, which is called again and resumes from the stored
		// position; go-mysql's own retries would resume from what it read instead.
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
func (d debugHandler) WithGroup(name string) slog.Handler    { return debugHandler{d.h.WithGroup(name)} }

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
	var me *gomysql.MyError
	if errors.As(err, &me) {
		switch me.Code {
		case errAccessDenied, errSpecificDenied, errDBDenied, errTableDenied:
			// Without REPLICATION SLAVE, registering as a replica fails with "access denied".
			return nil, store.LogUnavailable("cannot read the binlog (%s): %v", privilegesNeeded, err)
		case errFatalBinlogRead:
			return nil, r.lostPosition(start, err)
		}
	}
	return nil, fmt.Errorf("outbox: start reading the binlog: %w", err)
}

// lostPosition is the error for a position the binlog no longer holds.
func (r *reader) lostPosition(p position, err error) error {
	at := p.file + ":" + strconv.FormatUint(uint64(p.pos), 10)
	if r.mariadb && len(p.gtids) > 0 {
		at = "GTID " + formatGTIDs(p.gtids)
	}
	return store.LogUnavailable("the binlog no longer holds the reader's position %s (purged, or the log was reset): %v; "+
		"delete the row of %s to restart from the current position (the sweep delivers what was written meanwhile)", at, err, r.posTable)
}

// run streams the binlog from start until ctx ends or the stream fails.
func (r *reader) run(ctx context.Context, start position) error {
	cfg, err := r.syncerConfig()
	if err != nil {
		return err
	}
	syncer := replication.NewBinlogSyncer(cfg)
	defer syncer.Close()
	// A batch being recorded finishes (its messages were published), whatever ends the run.
	defer r.waitRecorded()
	streamer, err := r.startStream(syncer, start)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// go-mysql reads ahead into its own buffer; this goroutine hands its events over, so that
	// the loop below can tell when nothing more is at hand.
	events := make(chan *replication.BinlogEvent, 16)
	streamErr := make(chan error, 1)
	wg.Go(func() {
		for {
			e, err := streamer.GetEvent(ctx)
			if err != nil {
				if ctx.Err() == nil {
					streamErr <- err
				}
				return
			}
			select {
			case events <- e:
			case <-ctx.Done():
				return
			}
		}
	})

	now := time.Now()
	r.read, r.flushed, r.queued = start.clone(), start.clone(), start.clone()
	if r.read.gtids == nil {
		r.read.gtids = map[uint32]gtid{}
	}
	r.curFile, r.curPos = start.file, start.pos
	r.storedAt, r.heard = now, now
	r.status(store.LogStatus{Reading: true, LagBytes: -1})
	tick := time.NewTicker(sampleEvery / 2)
	defer tick.Stop()
	idle := time.NewTimer(idleWait)
	defer idle.Stop()
	for {
		var e *replication.BinlogEvent
		select {
		case e = <-events:
		case err := <-r.recording:
			if err := r.recorded(err); err != nil {
				return err
			}
			continue
		case err := <-streamErr:
			return r.streamError(err)
		case <-tick.C:
			if err := r.tick(ctx); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		default:
			// Nothing more at hand: hand over what the committed transactions hold. The
			// stream may only be a moment behind (a busy machine): give it that moment.
			if len(r.batch) > 0 {
				idle.Reset(idleWait)
				select {
				case e = <-events:
				case <-idle.C:
				}
			}
			if e != nil {
				break
			}
			if err := r.settle(ctx, true); err != nil {
				return err
			}
			select {
			case e = <-events:
			case err := <-r.recording:
				if err := r.recorded(err); err != nil {
					return err
				}
				continue
			case err := <-streamErr:
				return r.streamError(err)
			case <-tick.C:
				if err := r.tick(ctx); err != nil {
					return err
				}
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		r.heard = time.Now()
		if err := r.handle(ctx, e, false); err != nil {
			return err
		}
		if err := r.settle(ctx, false); err != nil {
			return err
		}
	}
}

func (r *reader) streamError(err error) error {
	var me *gomysql.MyError
	if errors.As(err, &me) && me.Code == errFatalBinlogRead {
		return r.lostPosition(r.read, err)
	}
	return fmt.Errorf("outbox: binlog stream: %w", err)
}

// handle follows one event: transactions, their outbox rows, and the position.
func (r *reader) handle(ctx context.Context, e *replication.BinlogEvent, nested bool) error {
	h := e.Header
	switch h.EventType {
	case replication.HEARTBEAT_EVENT, replication.HEARTBEAT_LOG_EVENT_V2:
		// Sent when the server has nothing more: its offset is the end of the log, which the
		// reader has reached (the events skipped to get there are not sent).
		if ge, ok := e.Event.(*replication.GenericEvent); ok && !r.inTx && h.LogPos > 0 &&
			strings.TrimRight(string(ge.Data), "\x00") == r.curFile {
			r.curPos = h.LogPos
		}
	default:
		// Events inside a transaction payload (MySQL's binlog compression) carry no position.
		if !nested && h.LogPos > 0 {
			r.curPos = h.LogPos
		}
	}
	switch ev := e.Event.(type) {
	case *replication.RotateEvent:
		r.curFile, r.curPos = string(ev.NextLogName), uint32(ev.Position)
		if h.Flags&replication.LOG_EVENT_ARTIFICIAL_F == 0 {
			// The old file may be purged now: store a position in the new one.
			r.dirty = true
		}
	case *replication.MariadbGTIDEvent:
		r.begin()
		// Read from the raw event: go-mysql keeps the first GTID event of each domain and
		// server in its GTID set and updates it in place as later ones arrive.
		if body := e.RawData; len(body) >= replication.EventHeaderSize+12 {
			body = body[replication.EventHeaderSize:]
			r.txGTID = gtid{server: h.ServerID, seq: binary.LittleEndian.Uint64(body)}
			r.txDom = binary.LittleEndian.Uint32(body[8:])
			r.hasGTID = true
		}
	case *replication.GTIDEvent:
		r.begin()
	case *replication.QueryEvent:
		q := ev.Query
		if len(q) > 16 {
			q = q[:16]
		}
		head := strings.ToUpper(strings.TrimSpace(string(q)))
		switch {
		case head == "BEGIN", strings.HasPrefix(head, "XA START"), strings.HasPrefix(head, "XA BEGIN"),
			strings.HasPrefix(head, "XA END"), strings.HasPrefix(head, "SAVEPOINT"), strings.HasPrefix(head, "ROLLBACK TO"):
			r.inTx = true
		case head == "COMMIT":
			r.end(true)
		case head == "ROLLBACK":
			r.end(false)
		default: // DDL, or another statement logged on its own
			r.txOther = true
			r.end(true)
		}
	case *replication.XIDEvent:
		r.end(true)
	case *replication.RowsEvent:
		if err := r.rows(ctx, ev); err != nil {
			return err
		}
	case *replication.TransactionPayloadEvent:
		for _, ne := range ev.Events {
			if err := r.handle(ctx, ne, true); err != nil {
				return err
			}
		}
	}
	if !r.inTx {
		r.read.file, r.read.pos = r.curFile, r.curPos
	}
	return nil
}

// begin starts a transaction. One still open did not end in a way the reader knows (an XA
// PREPARE): its rows are left to the sweep.
func (r *reader) begin() {
	if r.inTx {
		r.end(false)
	}
	r.inTx = true
}

// end ends the current transaction; committed, its outbox messages join the batch.
func (r *reader) end(commit bool) {
	if r.hasGTID {
		r.read.gtids[r.txDom] = r.txGTID
	}
	r.read.file, r.read.pos = r.curFile, r.curPos
	if commit && len(r.txMsgs) > 0 {
		if len(r.batch) == 0 {
			r.batchAt = time.Now()
		}
		r.batch = append(r.batch, r.txMsgs...)
		r.batchTxs = append(r.batchTxs, batchTx{end: len(r.batch), pos: r.read.clone()})
	}
	if r.txOther {
		r.dirty = true
	}
	r.inTx, r.hasGTID, r.txOther, r.txMsgs = false, false, false, nil
}

// rows takes the outbox messages of a rows event.
func (r *reader) rows(ctx context.Context, ev *replication.RowsEvent) error {
	if !r.inTx {
		r.begin()
	}
	if ev.Table == nil {
		r.txOther = true
		return nil
	}
	switch r.which(ev.Table) {
	case tableOther:
		r.txOther = true
		return nil
	case tablePosition:
		return nil
	}
	if ev.Type() != replication.EnumRowsEventTypeInsert || len(ev.Rows) == 0 {
		return nil
	}
	cols, err := r.cols.get(ctx, ev.Table)
	if errors.Is(err, errColumns) {
		// The sweep delivers what the log cannot.
		if r.warned != ev.Table.TableID {
			r.warned = ev.Table.TableID
			r.log.Warn("cannot map the logged rows of the outbox table to its columns; the sweep will deliver them", slog.Any("error", err))
		}
		return nil
	}
	if err != nil {
		return err
	}
	for _, row := range ev.Rows {
		m, err := decodeRow(cols, row)
		if err != nil {
			r.log.Error("cannot decode a logged outbox row; the sweep will deliver it", slog.Any("error", err))
			continue
		}
		r.txMsgs = append(r.txMsgs, m)
	}
	return nil
}

// settle hands the batch over when it is full, old, or the stream is idle, and otherwise
// stores a position that moved past other tables' changes, at most every positionEvery.
func (r *reader) settle(ctx context.Context, idle bool) error {
	switch {
	case len(r.batch) > 0:
		for len(r.batch) >= r.c.Batch() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := r.flush(ctx, r.c.Batch()); err != nil {
				return err
			}
		}
		if len(r.batch) > 0 && (idle || time.Since(r.batchAt) >= logBatchWait) {
			return r.flush(ctx, len(r.batch))
		}
	case r.dirty && r.recording == nil && time.Since(r.storedAt) >= positionEvery:
		p := r.read.clone()
		if err := r.savePosition(ctx, r.s.DB(), p); err != nil {
			return fmt.Errorf("outbox: store the log position of %s: %w", r.s.Table(), err)
		}
		r.flushed, r.queued, r.dirty, r.storedAt = p, p, false, time.Now()
	}
	return nil
}

// flush publishes the first n messages of the batch, and records their outcome with the
// position after them while the reader goes on: one batch records while the next is read
// and published. A transaction larger than a batch is cut: the position recorded with its
// first part is the one before it, so that after a crash it is read again, and its messages
// recorded as delivered are skipped.
func (r *reader) flush(ctx context.Context, n int) error {
	if r.recordHold {
		// Its failures and hand-overs hold keys back, which the next batch must see.
		if err := r.waitRecorded(); err != nil {
			return err
		}
	}
	chunk := r.batch[:n]
	p, whole := r.queued, 0
	for _, tx := range r.batchTxs {
		if tx.end > n {
			break
		}
		p, whole = tx.pos, whole+1
	}
	if n == len(r.batch) {
		p = r.read.clone() // also past other tables' changes read since
	}
	lb, err := r.s.PublishLog(ctx, r.c, chunk, r.lookup)
	if err != nil {
		return err
	}
	// Outcomes and positions are recorded in order.
	if err := r.waitRecorded(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- lb.Record(ctx, func(ctx context.Context, tx *sql.Tx) error {
			if hook := recordHook.Load(); hook != nil {
				(*hook)(r.schema)
			}
			return r.savePosition(ctx, tx, p)
		})
	}()
	r.recording, r.recordPos, r.recordHold, r.queued = done, p, lb.HoldsKeys(), p
	r.batchTxs = r.batchTxs[whole:]
	for i := range r.batchTxs {
		r.batchTxs[i].end -= n
	}
	if r.batch = r.batch[n:]; len(r.batch) == 0 {
		r.batch, r.batchTxs, r.dirty = nil, nil, false
	}
	r.heard = time.Now()
	return nil
}

// recordHook, set by tests, runs in the transaction that records a batch, with the outbox
// table's database.
var recordHook atomic.Pointer[func(schema string)]

// waitRecorded waits for the batch being recorded, if any.
func (r *reader) waitRecorded() error {
	if r.recording == nil {
		return nil
	}
	return r.recorded(<-r.recording)
}

// recorded takes the result of recording a batch.
func (r *reader) recorded(err error) error {
	r.recording, r.recordHold = nil, false
	if err != nil {
		return err
	}
	r.flushed, r.storedAt = r.recordPos, time.Now()
	r.advance()
	return nil
}

// lookupConn is a session for looking logged rows up. The server sends a transaction once it
// is in the binlog, which is before the storage engine commits it: until then a query does
// not see its rows, and the reader would take them for messages that polling delivered
// already. A locking read waits for the transaction that wrote a row to commit; in READ
// COMMITTED it takes no gap locks, which would hold up writers.
func lookupConn(ctx context.Context, db *sql.DB) (*sql.Conn, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: log reader: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"); err != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
		return nil, fmt.Errorf("outbox: log reader: %w", err)
	}
	return conn, nil
}

// done is the position up to which every message read is recorded.
func (r *reader) done() position {
	if len(r.batch) == 0 && r.recording == nil {
		return r.read
	}
	return r.flushed
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
	if err := r.settle(ctx, true); err != nil {
		return err
	}
	r.advance()
	if time.Since(r.sampledAt) < sampleEvery-sampleEvery/10 {
		return nil
	}
	if err := r.sample(ctx); err != nil {
		return err
	}
	r.status(store.LogStatus{Reading: true, CaughtUp: r.caughtUp, LagBytes: r.lag})
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
	s.file, s.pos, err = masterStatus(ctx, r.lockConn)
	if err != nil {
		if sqlErrNumber(err) == errSpecificDenied {
			return store.LogUnavailable("%s: %v", privilegesNeeded, err)
		}
		return fmt.Errorf("outbox: log reader: read the binlog end: %w", err)
	}
	r.sampledAt = s.at
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
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
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
