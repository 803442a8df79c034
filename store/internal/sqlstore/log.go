package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/outboxgo/outbox/store"
)

var _ store.LogReader = (*Store)(nil)

// LogMessage is a message read from the change log, with the seq of its row.
type LogMessage struct {
	Seq int64
	// LogOnly is true for a row that a log-only store wrote and deleted at once ([Config].LogOnly):
	// it is not in the table, so its outcome is recorded by inserting it (failed, or handed
	// over to polling), or not at all (delivered).
	LogOnly bool
	store.Message
}

// OpenLog implements [store.LogReader] through the store's [Hooks].OpenLog.
func (s *Store) OpenLog(ctx context.Context, o store.LogOptions) (store.LogStream, error) {
	if s.hooks.OpenLog == nil {
		return nil, fmt.Errorf("%w: the %s store reads no change log", store.ErrLogUnavailable, s.d.Name)
	}
	// Not reset when reading ends: another dispatcher on this Store value may be reading.
	s.catchUp.Store(-1)
	return s.hooks.OpenLog(ctx, s, o)
}

// LogRead is a batch as a store's stream reads it, kept in [store.LogBatch].Read: its
// messages, where the stream stands once it is recorded, and what filtering found.
type LogRead struct {
	Msgs []LogMessage
	// Position is the stream's own: where it stands once the batch is recorded.
	Position any
	filtered *logRecord
}

// NewLogBatch is a batch of msgs read from the change log, to be at pos once recorded.
func NewLogBatch(msgs []LogMessage, pos any) *store.LogBatch {
	return &store.LogBatch{Read: &LogRead{Msgs: msgs, Position: pos}}
}

// ReadOf is the LogRead of a batch that [NewLogBatch] made.
func ReadOf(b *store.LogBatch) *LogRead {
	r, _ := b.Read.(*LogRead)
	if r == nil {
		panic(fmt.Sprintf("outbox: a log batch of another store (%T)", b.Read))
	}
	return r
}

// catchingUp returns, while messages that were pending before the first batch of this
// reading session (first is its lowest seq) may still be pending and not held, the highest
// seq they may have (0 once none is): the log may not carry them (written while the
// dispatchers polled), so each holds back the later messages of its key until a sweep
// delivers it. It looks them up on that batch; those not held count, and those a claim
// holds now (a polling batch in flight as the reader starts). Failed and handed-over ones
// need no catching up: the reader's lookup of held messages keeps their keys back.
func (s *Store) catchingUp(ctx context.Context, first int64) (int64, error) {
	upTo := s.catchUp.Load()
	if upTo == 0 {
		return 0, nil
	}
	b := builder{d: s.d}
	if upTo < 0 {
		var pending sql.NullInt64
		err := s.db.QueryRowContext(ctx, "SELECT MAX(seq) FROM "+s.t.String()+" WHERE "+s.unfinished()+" AND seq < "+b.arg(first), b.args...).Scan(&pending)
		if err != nil {
			return 0, err
		}
		s.catchUp.Store(pending.Int64)
		return pending.Int64, nil
	}
	var one int
	err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.t.String()+" WHERE "+s.unfinished()+" AND seq <= "+b.arg(upTo)+" ORDER BY seq LIMIT 1", b.args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		s.catchUp.Store(0)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return upTo, nil
}

// unfinished is the condition of a message that a reader catching up waits for: pending, and
// not held, or held by a live claim.
func (s *Store) unfinished() string {
	return "state = 'pending' AND (held = 0 OR claimed_until > " + s.d.Now + ")"
}

// FilterLog implements [store.LogStream].Filter for a stream of this store. Rows are looked
// up through lookup when it is set: a MySQL session in READ COMMITTED, whose locking reads
// wait for the writers' commits (the binlog carries a transaction before InnoDB commits it),
// without gap locks; deleting is [store.LogOptions].DeleteDelivered.
//
// Messages that are no longer pending, or that polling holds (claimed, or waiting for a
// retry), are skipped: polling delivered them before the log reached them, or owns them now.
// A message whose key has an earlier message held by polling is handed over to polling, with
// the later messages of its key, so that the key stays in order.
func (s *Store) FilterLog(ctx context.Context, b *store.LogBatch, lookup *sql.Conn, deleting bool) error {
	read := ReadOf(b)
	msgs := read.Msgs
	// Messages pending from before this reading session may not be in the log, and an
	// earlier message of a key must not be overtaken: until they are delivered, they hold
	// back the later messages of their keys, which go to the sweep, as it takes them in
	// write order.
	first := int64(math.MaxInt64)
	for _, m := range msgs {
		first = min(first, m.Seq)
	}
	upTo, err := s.catchingUp(ctx, first)
	if err != nil {
		return fmt.Errorf("outbox: look up messages pending before the log reader started in %s: %w", s.t, err)
	}
	ready, heldFrom, claimed, err := s.logFilter(ctx, msgs, lookup, deleting, upTo)
	if err != nil {
		return fmt.Errorf("outbox: look up logged messages in %s: %w", s.t, err)
	}
	var (
		blocked = map[string]bool{}
		rec     = &logRecord{marks: claimed, seqOf: make(map[string]int64, len(msgs))}
	)
	b.Publish = nil
	for _, m := range msgs {
		if !ready[m.Seq] {
			continue
		}
		rec.seqOf[m.ID] = m.Seq
		if m.LogOnly {
			rec.keepLogOnly(m)
		}
		if m.Key != "" {
			if from, ok := heldFrom[m.Key]; (ok && from < m.Seq) || blocked[m.Key] {
				blocked[m.Key] = true
				rec.handOver = append(rec.handOver, m.Seq)
				continue
			}
		}
		b.Publish = append(b.Publish, store.ClaimedMessage{Message: m.Message})
	}
	read.filtered = rec
	b.HeldBack = len(rec.handOver) > 0 || len(rec.marks) > 0
	return nil
}

// visibleWithin bounds the wait for logged rows to become visible to queries. The log can
// carry a commit a moment before other sessions see it (Postgres sends the commit once its
// WAL is flushed, before the transaction leaves the running set; MySQL writes the binlog
// before InnoDB commits), so a row the filter does not find is looked up again, first after
// 100 µs, as the gap is mostly far shorter than a millisecond, then at doubling waits. A row
// still missing was deleted: its message is not handed over. Where delivered messages are
// deleted (LogOptions.DeleteDelivered), a reader that reads again what polling delivered
// meanwhile pays this wait once per batch.
const visibleWithin = 200 * time.Millisecond

// logFilter returns the seqs of msgs that are pending and not held by polling, and for each
// of their keys with held messages (claimed, or failed before) the lowest held seq. Rows are
// looked up by seq, the primary key, and held messages of their keys in the same statement,
// through the "pending_key" index: only messages up to the batch's last are looked at, and
// those before a batch are mostly delivered already. A batch of log-only messages that
// nothing holds skips the lookup (logOnlyClear).
func (s *Store) logFilter(ctx context.Context, msgs []LogMessage, lookup *sql.Conn, deleting bool, catchUpTo int64) (ready map[int64]bool, heldFrom map[string]int64, claimed []int64, err error) {
	if catchUpTo == 0 {
		free, err := s.logOnlyClear(ctx, msgs, lookup)
		if err != nil {
			return nil, nil, nil, err
		}
		if free {
			ready = make(map[int64]bool, len(msgs))
			for _, m := range msgs {
				ready[m.Seq] = true
			}
			return ready, nil, nil, nil
		}
	}
	s.logLookups.Add(1)
	l := s.newLogLookup(msgs, lookup)
	l.catchUpTo = catchUpTo
	missing := make([]int64, len(msgs))
	logOnly := map[int64]bool{}
	for i, m := range msgs {
		missing[i] = m.Seq
		if m.LogOnly {
			logOnly[m.Seq] = true
		}
	}
	if err := l.heldAlone(ctx); err != nil {
		return nil, nil, nil, err
	}
	deadline := time.Now().Add(visibleWithin)
	for wait := 100 * time.Microsecond; ; wait *= 2 {
		found, err := l.rows(ctx, missing)
		if err != nil {
			return nil, nil, nil, err
		}
		// A log-only row is not in the table, unless its outcome was recorded there (it
		// failed, or was handed over, before a crash): then polling owns it.
		missing = slices.DeleteFunc(missing, func(seq int64) bool {
			if logOnly[seq] && !found[seq] {
				l.ready[seq] = true
				return true
			}
			return found[seq]
		})
		if len(missing) == 0 || time.Now().Add(wait).After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, nil, nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	if len(missing) > 0 && !deleting { // where delivered messages are deleted, polling delivered these
		s.log.Warn("logged outbox rows not found in the table: deleted, so not published", slog.Int("count", len(missing)))
	}
	return l.ready, l.heldFrom, l.claimed, nil
}

// logOnlyClear reports whether msgs, when all are log-only, are ready with none held back,
// so that the batch needs no lookup of its rows and keys: no row of the table has a seq of
// the batch (an outcome recorded before a crash) and no row up to its last message holds a
// key (failed, handed over, claimed by a sweep; with StrictOrder, parked). One probe of the
// seq range and of the small held index, where the lookup sends every seq and key.
func (s *Store) logOnlyClear(ctx context.Context, msgs []LogMessage, lookup *sql.Conn) (bool, error) {
	if len(msgs) == 0 {
		return false, nil
	}
	first, last := int64(math.MaxInt64), int64(math.MinInt64)
	for _, m := range msgs {
		if !m.LogOnly {
			return false, nil
		}
		first, last = min(first, m.Seq), max(last, m.Seq)
	}
	b := builder{d: s.d}
	t := s.t.String()
	q := "SELECT 1 FROM " + t + " WHERE seq >= " + b.arg(first) + " AND seq <= " + b.arg(last) +
		" UNION ALL SELECT 1 FROM " + t + " WHERE " + s.d.waiting() + " AND held = 1 AND seq <= " + b.arg(last)
	if s.strict {
		q += " UNION ALL SELECT 1 FROM " + t + " WHERE state = 'parked' AND seq <= " + b.arg(last)
	}
	rows, err := s.lookupDB(lookup).QueryContext(ctx, q+" LIMIT 1", b.args...)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	held := rows.Next()
	return !held, rows.Err()
}

// lookupDB is where a log batch is looked up: lookup when it is set (see FilterLog), the
// store's pool otherwise.
func (s *Store) lookupDB(lookup *sql.Conn) store.Querier {
	if lookup != nil {
		return lookup
	}
	return s.db
}

// LogLookups is how many log batches this store has looked up row by row and key by key
// (see logOnlyClear): the cost that log-only batches with nothing held do without.
func (s *Store) LogLookups() int64 { return s.logLookups.Load() }

// logLookup looks up the rows of a log batch, and the held messages of its keys up to the
// batch's last message.
type logLookup struct {
	s        *Store
	db       store.Querier
	lock     string // a locking read's suffix, on MySQL's lookup session
	keys     []string
	maxSeq   int64
	seqs     []int64 // of the batch
	withHeld bool    // the held messages go into the next lookup of rows
	// catchUpTo is, while the reader catches up (see catchingUp), the highest seq of the
	// messages pending from before its session: those not in the batch hold their keys.
	catchUpTo int64
	ready     map[int64]bool
	heldFrom  map[string]int64
	keyOf     map[int64]string
	claimed   []int64 // the batch's messages that a claim holds, not marked as held yet
}

func (s *Store) newLogLookup(msgs []LogMessage, lookup *sql.Conn) *logLookup {
	l := &logLookup{s: s, db: s.lookupDB(lookup), ready: make(map[int64]bool, len(msgs)), heldFrom: map[string]int64{}, keyOf: make(map[int64]string, len(msgs))}
	if lookup != nil {
		l.lock = s.d.ShareLock
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		l.maxSeq = max(l.maxSeq, m.Seq)
		l.seqs = append(l.seqs, m.Seq)
		l.keyOf[m.Seq] = m.Key
		if m.Key != "" && !seen[m.Key] {
			seen[m.Key] = true
			l.keys = append(l.keys, m.Key)
		}
	}
	// Keys go into the first lookup of rows when they fit beside its seqs.
	l.withHeld = len(l.keys) > 0 && len(l.keys) <= (s.d.MaxParams-16)/2
	return l
}

// held is the query of the held messages of keys that are marked as held: failed, handed
// over, requeued, claimed by a sweep, or found claimed by an earlier batch (a retry time in
// next_attempt_at, which claims do not change, so that the index of such messages, Postgres's
// "held_key" and MySQL's "waiting_key", stays small and claims change no index). With
// StrictOrder, parked messages too; while the reader catches up, the messages pending from
// before its session, but for the batch's own.
func (l *logLookup) held(b *builder, keys []string) string {
	byKey := b.in("message_key", keys) // arguments go in the order of their placeholders
	holding := "(" + l.s.d.waiting() + " AND held = 1)"
	if l.s.strict {
		holding += " OR state = 'parked'"
	}
	if l.catchUpTo > 0 {
		holding += " OR (" + l.s.unfinished() + " AND seq <= " + b.arg(l.catchUpTo) + " AND NOT (" + b.inSeqs("seq", l.seqs) + "))"
	}
	holding = "(" + holding + ")"
	return "SELECT MIN(seq), -1, message_key FROM " + l.s.t.String() + " WHERE " + byKey +
		" AND " + holding + " AND seq <= " + b.arg(l.maxSeq) + " GROUP BY message_key"
}

// hold records that key has a held message at seq.
func (l *logLookup) hold(key string, seq int64) {
	if from, ok := l.heldFrom[key]; !ok || seq < from {
		l.heldFrom[key] = seq
	}
}

// heldAlone looks the held messages up in statements of their own when the keys are too
// many to go beside the rows' seqs.
func (l *logLookup) heldAlone(ctx context.Context) error {
	if l.withHeld || len(l.keys) == 0 {
		return nil
	}
	return inChunks(l.keys, l.s.d.MaxParams-16, func(keys []string) error {
		b := builder{d: l.s.d}
		return l.scan(ctx, l.held(&b, keys), b.args, nil, nil)
	})
}

// rows looks up the rows seqs once, and returns those it found.
func (l *logLookup) rows(ctx context.Context, seqs []int64) (map[int64]bool, error) {
	found := make(map[int64]bool, len(seqs))
	err := inChunks(seqs, (l.s.d.MaxParams-16)/2, func(seqs []int64) error {
		b := builder{d: l.s.d}
		q := "SELECT seq, CASE WHEN (state = 'pending' AND held = 0) OR state = '" + LogOnlyState + "' THEN 1 WHEN state = 'pending' THEN 2 ELSE 0 END, '' FROM " + l.s.t.String() +
			" WHERE " + l.seqsIn(&b, seqs) + l.lock
		if l.withHeld {
			q = "(" + q + ") UNION ALL (" + l.held(&b, l.keys) + ")"
			l.withHeld = false
		}
		want := make(map[int64]bool, len(seqs))
		for _, seq := range seqs {
			want[seq] = true
		}
		return l.scan(ctx, q, b.args, found, want)
	})
	return found, err
}

// seqsIn is the condition of a lookup of the rows seqs: their range, where the lookup reads
// without locks and seqs fill at least half of it, seqs one by one otherwise. The rows of a
// transaction mostly follow each other, and on Postgres reading a range of 500 took a third
// of the time of looking up 500 seqs. A locking read (MySQL) would wait for the transactions
// that write other rows of the range.
func (l *logLookup) seqsIn(b *builder, seqs []int64) string {
	lo, hi := slices.Min(seqs), slices.Max(seqs)
	if l.lock == "" && hi-lo < 2*int64(len(seqs)) {
		return "seq BETWEEN " + b.arg(lo) + " AND " + b.arg(hi)
	}
	return b.inSeqs("seq", seqs)
}

// scan runs a lookup q and takes in what it returns: held messages of keys (-1), and rows
// of the batch that want holds, which it adds to found: ready (1), held (2) or neither (0).
func (l *logLookup) scan(ctx context.Context, q string, args []any, found, want map[int64]bool) error {
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			seq int64
			ok  int
			key string
		)
		if err := rows.Scan(&seq, &ok, &key); err != nil {
			return err
		}
		if ok == -1 {
			l.hold(key, seq)
			continue
		}
		if !want[seq] {
			continue // another row of the range looked up
		}
		found[seq] = true
		l.ready[seq] = ok == 1
		if ok == 2 { // held, by a claim or a failure: its key waits behind it
			l.claimed = append(l.claimed, seq)
			if key := l.keyOf[seq]; key != "" {
				l.hold(key, seq)
			}
		}
	}
	return rows.Err()
}
