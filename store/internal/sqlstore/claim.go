package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/outboxgo/outbox/store"
)

// Claim implements [store.Engine].
func (s *Store) Claim(ctx context.Context, p *store.ClaimParams) (*store.ClaimResult, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("outbox: ClaimParams.Limit must be positive, got %d", p.Limit)
	}
	if p.Lease <= 0 {
		return nil, fmt.Errorf("outbox: ClaimParams.Lease must be positive, got %v", p.Lease)
	}
	if len(p.Token) > 36 {
		return nil, fmt.Errorf("outbox: ClaimParams.Token must be at most 36 characters, got %d", len(p.Token))
	}
	var (
		res = &store.ClaimResult{Token: cmp.Or(p.Token, uuid.NewString())}
		got []claimedRow
		err error
	)
	switch s.d.Claims {
	case ClaimsOneWriter:
		got, err = s.claimOnce(ctx, s.db, res.Token, p)
	default:
		got, err = s.claimLocked(ctx, res.Token, p)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: claim from %s: %w", s.t, err)
	}
	s.claimed.add(got)
	slices.SortFunc(got, func(a, b claimedRow) int { return cmp.Compare(a.seq, b.seq) })
	res.Messages = make([]store.ClaimedMessage, len(got))
	for i, r := range got {
		res.Messages[i] = r.m
	}
	return res, nil
}

type claimedRow struct {
	seq int64
	m   store.ClaimedMessage
}

// sweepMark is the extra SET clause of a sweep's claim: it marks the claimed messages as
// held (next_attempt_at), which the log reader looks for by key; a claim beside no log reader
// leaves every indexed column alone, so that Postgres updates the rows in place.
func (s *Store) sweepMark(p *store.ClaimParams) string {
	if p.OlderThan <= 0 {
		return ""
	}
	return ", next_attempt_at = CASE WHEN next_attempt_at = " + s.d.Epoch + " THEN " + s.d.Now + " ELSE next_attempt_at END"
}

// due is the condition, on the table aliased o, of a pending message that nothing holds back
// by itself: no live claim holds it, and it never failed or its retry time has come. A
// message that never failed is due whatever its next_attempt_at says, so that no writer's
// clock can make it wait while a later message of its key goes ahead. The times compared
// are the database's.
func (s *Store) due(alias string) string {
	return alias + ".state = 'pending' AND " + alias + ".claimed_until <= " + s.d.Now +
		" AND (" + alias + ".attempts = 0 OR " + alias + ".next_attempt_at <= " + s.d.Now + ")"
}

// A claim takes, in write order, the due messages of a window of the oldest pending ones
// whose key has no earlier message held (pending and not due: claimed, waiting for a retry,
// or, with StrictOrder, behind a parked message). The window holds every message that could
// hold back one in it, as it starts at the oldest. One pass finds each key's first held
// message however many messages the key has, where a look-up per message through the key's
// index walked its earlier ones (0.95 s a claim on MySQL with one key holding the backlog).
// Servers pick in Go, leaving no join to a planner (Postgres's nested loop made claims inside
// drains twenty times slower); SQLite, in process, picks in SQL, where reading each row into
// Go costs more than the pick. The times compared are the database's.

// windowQuery is the query of a claim's window of size messages: seq, key and whether the
// message is held.
func (s *Store) windowQuery(b *builder, p *store.ClaimParams, size int64) string {
	t := s.t.String()
	held := "o.claimed_until > " + s.d.Now + " OR (o.attempts > 0 AND o.next_attempt_at > " + s.d.Now + ")"
	if s.strict {
		held += " OR EXISTS (SELECT 1 FROM " + t + " pk WHERE pk.message_key = o.message_key AND pk.state = 'parked' AND pk.seq < o.seq)"
	}
	look := "o.state = 'pending'"
	if cond := s.sweepOnly(b, p); cond != "" {
		look += " AND (" + cond + " OR " + held + ")"
	}
	return "SELECT o.seq, o.message_key, CASE WHEN " + held + " THEN 1 ELSE 0 END AS held FROM " + t + " o WHERE " + look +
		" ORDER BY o.seq LIMIT " + b.arg(size)
}

// picked is the query of the seqs that a claim of p takes, where the database picks them.
func (s *Store) picked(b *builder, p *store.ClaimParams) string {
	return "WITH win AS (" + s.windowQuery(b, p, s.windowOf(p)) + ")," +
		" blocked AS (SELECT message_key, MIN(seq) AS seq FROM win WHERE held = 1 AND message_key <> '' GROUP BY message_key)" +
		" SELECT win.seq FROM win LEFT JOIN blocked k ON k.message_key = win.message_key" +
		" WHERE win.held = 0 AND (k.seq IS NULL OR win.seq < k.seq) ORDER BY win.seq LIMIT " + b.arg(p.Limit)
}

// pick reads the window of a claim of p through db and returns the seqs the claim takes, and
// sizes the next window.
func (s *Store) pick(ctx context.Context, db store.Querier, p *store.ClaimParams) ([]int64, error) {
	b := builder{d: s.d}
	window := s.windowOf(p)
	rows, err := db.QueryContext(ctx, s.windowQuery(&b, p, window), b.args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var (
		seqs    []int64
		read    int64
		blocked = map[string]bool{}
	)
	for len(seqs) < p.Limit && rows.Next() {
		read++
		var (
			seq  int64
			key  string
			held int
		)
		if err := rows.Scan(&seq, &key, &held); err != nil {
			return nil, err
		}
		switch {
		case held == 1:
			if key != "" {
				blocked[key] = true
			}
		case !blocked[key]:
			seqs = append(seqs, seq)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.sized(p, len(seqs), read == window)
	return seqs, nil
}

// sweepOnly is the condition that a sweep (ClaimParams.OlderThan) adds to a claim: messages
// written at least OlderThan ago by the database's clock, and those a log reader handed over,
// which are held; empty for a polling claim.
func (s *Store) sweepOnly(b *builder, p *store.ClaimParams) string {
	if p.OlderThan <= 0 {
		return ""
	}
	cond := "o.created_at < " + b.nowPlus(-p.OlderThan) + " OR o.held = 1"
	if upTo := s.catchUp.Load(); upTo > 0 { // a log reader is catching up: these first
		cond += " OR o.seq <= " + b.arg(upTo)
	}
	return cond
}

// Claims look at a window of the oldest pending messages. While other claims hold many keys
// (more workers or larger batches than the outbox has keys in flight), most of the oldest
// messages wait behind them, and a claim that looked on through the whole backlog would pass
// over every one of them to come back nearly empty. The window is minWindow times the claim's
// Limit after a full claim: room for the batch and for as many messages held by other
// batches. Each claim that comes back short from a full window doubles it, so that messages
// behind a long run of held ones (a key failing with thousands of messages) are reached
// within a few claims. Twice the Limit rather than four times read half the rows where one
// batch holds every key (a backlog of one key, or four workers of 1,000 over 1,000 keys),
// and drained those 7 to 36% faster.
const minWindow = 2

// windowOf is how many messages a claim of p looks at.
func (s *Store) windowOf(p *store.ClaimParams) int64 {
	return max(s.windowSizeOf(p).Load(), int64(minWindow*p.Limit))
}

// windowSizeOf is where the window of claims like p is kept: sweeps, which look only at old
// and held messages, keep their own.
func (s *Store) windowSizeOf(p *store.ClaimParams) *atomic.Int64 {
	if p.OlderThan > 0 {
		return &s.sweepWindowSize
	}
	return &s.windowSize
}

// sized sets the next claim's window after a claim of p that picked picked messages from a
// window that was full, or not: a window that held fewer messages held every one the claim
// could take, and a larger one would only be read in full at the next backlog.
func (s *Store) sized(p *store.ClaimParams, picked int, full bool) {
	if picked >= p.Limit || !full {
		s.windowSizeOf(p).Store(0)
		return
	}
	s.windowSizeOf(p).Store(min(s.windowOf(p)*2, 1<<40)) // a LIMIT, far past any backlog
}

const claimedColumns = "seq, id, topic, message_key, payload, headers, created_at, attempts"

// claimOnce claims with one UPDATE ... RETURNING. Alone it is atomic only where one writer
// runs at a time (SQLite), where the UPDATE picks the messages too; Postgres runs it under
// the claim lock, after picking them.
func (s *Store) claimOnce(ctx context.Context, db store.Querier, token string, p *store.ClaimParams) ([]claimedRow, error) {
	b := builder{d: s.d}
	q := "UPDATE " + s.t.String() + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease) + s.sweepMark(p)
	if s.d.Claims == ClaimsOneWriter {
		q += " WHERE seq IN (" + s.picked(&b, p) + ")"
	} else {
		seqs, err := s.pick(ctx, db, p)
		if err != nil || len(seqs) == 0 {
			return nil, err
		}
		// A message that a log reader marked since the window was read is left out.
		q += " WHERE " + b.inSeqs("seq", seqs) + " AND state = 'pending'"
	}
	rows, err := db.QueryContext(ctx, q+" RETURNING "+claimedColumns, b.args...)
	if err != nil {
		return nil, err
	}
	got, err := scanClaimed(rows)
	if err == nil && s.d.Claims == ClaimsOneWriter {
		s.sized(p, len(got), true) // how full the window was stays in SQLite
	}
	return got, err
}

func scanClaimed(rows *sql.Rows) ([]claimedRow, error) {
	defer rows.Close()
	var got []claimedRow
	for rows.Next() {
		var (
			r       claimedRow
			headers string
			created timeValue
			err     error
		)
		if err := rows.Scan(&r.seq, &r.m.ID, &r.m.Topic, &r.m.Key, &r.m.Payload, &headers, &created, &r.m.Attempts); err != nil {
			return nil, err
		}
		if r.m.Headers, err = store.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %s: %w", r.m.ID, err)
		}
		r.m.CreatedAt = created.t
		got = append(got, r)
	}
	return got, rows.Err()
}

// claimLocked claims where several processes claim at once (Postgres, MySQL). Claims take
// turns through a lock named after the table, held for the few milliseconds a claim takes:
// each claim then sees every earlier claim committed, which keeps the messages of a key in
// order across dispatchers. A claim reads its window without locks and updates only rows no
// claim holds, so it never waits on rows that other dispatchers are publishing or marking
// (see claimOnSession for MySQL). A cheap look first keeps an idle outbox at one query per
// poll (its ORDER BY has the planner read the pending index from its head, not all of it);
// after a claim that found messages, the next claim goes straight to the lock.
func (s *Store) claimLocked(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	if !s.found.Load() {
		b := builder{d: s.d}
		var one int
		look := s.due("o")
		if cond := s.sweepOnly(&b, p); cond != "" {
			look += " AND (" + cond + ")"
		}
		err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.t.String()+" o WHERE "+look+
			" ORDER BY o.seq LIMIT 1", b.args...).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	claim := s.claimOnSession
	if s.d.Claims == ClaimsInTurnsInATransaction {
		claim = s.claimInTransaction
	}
	got, err := claim(ctx, token, p)
	s.found.Store(err == nil && len(got) > 0)
	return got, err
}

func (s *Store) claimInTransaction(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.d.ClaimTurn, s.t.lockKey("claim")); err != nil {
		return nil, err
	}
	got, err := s.claimOnce(ctx, tx, token, p)
	if err != nil {
		return nil, err
	}
	return got, tx.Commit()
}

func (s *Store) claimOnSession(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	unlock, err := s.lockSession(ctx, conn, "claim", 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Each statement commits on its own, and reads what was committed before it: the window
	// sees every claim committed before the lock was granted. The messages are chosen by a
	// plain read, not a locking one: SKIP LOCKED would pass over an earlier message of a key
	// that a statement of another session has locked (MySQL locks every row an UPDATE scans)
	// and claim a later one, out of order; a locking read without it would wait for the
	// application's transactions that insert messages. The UPDATE then claims exactly those
	// rows, if no other session changed one meanwhile. No transaction spares three round
	// trips (setting its isolation, starting it, committing it) of a claim's seven.
	picked, err := s.pick(ctx, conn, p)
	if err != nil || len(picked) == 0 {
		return nil, err
	}
	if hook := pickedHook.Load(); hook != nil {
		(*hook)()
	}
	b := builder{d: s.d}
	upd := "UPDATE " + s.t.String() + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease) + s.sweepMark(p)
	upd += " WHERE " + b.inSeqs("seq", picked) + " AND state = 'pending' AND claimed_until <= " + s.d.Now
	res, err := conn.ExecContext(ctx, upd, b.args...)
	if err != nil {
		return nil, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, err
	}
	if n != int64(len(picked)) {
		// A message changed between the read and the UPDATE (an operator, a log reader
		// marking it): give back what was taken rather than claim a batch with a gap.
		if n > 0 {
			b = builder{d: s.d}
			back := "UPDATE " + s.t.String() + " SET claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Epoch +
				" WHERE " + b.inSeqs("seq", picked) + " AND claim_token = " + b.arg(token)
			_, err = conn.ExecContext(ctx, back, b.args...)
		}
		return nil, err
	}
	b = builder{d: s.d}
	q := "SELECT " + claimedColumns + " FROM " + s.t.String() + " WHERE " + b.inSeqs("seq", picked) + " AND claim_token = " + b.arg(token) + " ORDER BY seq"
	rows, err := conn.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, err
	}
	return scanClaimed(rows)
}

// pickedHook, set by tests, runs after a claim on a session picked its messages, before it
// updates them.
var pickedHook atomic.Pointer[func()]

// SetPickedHook makes f run after each claim on a session (MySQL) picked its messages and
// before it updates them, until the returned function is called. For this module's tests.
func SetPickedHook(f func()) (restore func()) {
	pickedHook.Store(&f)
	return func() { pickedHook.Store(nil) }
}
