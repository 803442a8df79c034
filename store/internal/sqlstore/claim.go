package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
	s.sized(p, len(got))
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

// sweepOnly is the extra condition of a sweep's claim (ClaimParams.OlderThan): messages
// written at least OlderThan ago by the database's clock, and those a log reader handed
// over, which are held.
func (s *Store) sweepOnly(b *builder, p *store.ClaimParams) string {
	if p.OlderThan <= 0 {
		return ""
	}
	cond := "o.created_at < " + b.nowPlus(-p.OlderThan) + " OR o.held = 1"
	if upTo := s.catchUp.Load(); upTo > 0 { // a log reader is catching up: these first
		cond += " OR o.seq <= " + b.arg(upTo)
	}
	return " AND (" + cond + ")"
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

// claimable is the condition, on the table aliased o, of a message that may be claimed: it
// is due, and no earlier message of its key is pending and not due; only held messages
// (claimed, or failed before) can be. Postgres and SQLite find them through the pending
// messages by key ("pending_key"), as no index may cover what a claim changes if Postgres is
// to update claimed rows in place; MySQL, whose claims update rows in place anyway, through
// its "held" index. Earlier messages of the key that are due have lower seq and so come
// first within a claim's LIMIT.
func (s *Store) claimable(b *builder, p *store.ClaimParams) string {
	return s.due("o") + s.sweepOnly(b, p) + s.window(b, p) +
		" AND (o.message_key = '' OR NOT EXISTS (SELECT 1 FROM " + s.t.String() + " e WHERE e.message_key = o.message_key" +
		" AND e.state = 'pending' AND e.held = 1 AND e.seq < o.seq" +
		" AND (e.claimed_until > " + s.d.Now + " OR (e.attempts > 0 AND e.next_attempt_at > " + s.d.Now + ")))" + s.parkedHolds("o") + ")"
}

// Claims look at a window of the oldest pending messages. While other claims hold many keys
// (more workers or larger batches than the outbox has keys in flight), most of the oldest
// messages wait behind them, and a claim that looked on through the whole backlog would
// cost a look-up per message (a quarter of a second on 50,000) to come back nearly empty.
// The window is minWindow times the claim's Limit after a full claim; each claim that comes
// back short doubles it, so that messages behind a long run of held ones (a key failing
// with thousands of messages) are reached within a few claims.
const minWindow = 4

// window is the condition that bounds a polling claim to its window: seq at most the window's
// size past the oldest pending message. The window is a range of seqs, not a count of
// pending messages: finding where it ends is then one step into the pending index rather
// than a walk through the whole window (a third of a claim's time on Postgres). Seqs of
// delivered messages and gaps in the range only make the window hold fewer pending
// messages; a claim that comes back short widens it. Every earlier message of a message in
// the window is in the window too, as the window starts at the oldest pending message. A
// sweep looks at every message it may take.
func (s *Store) window(b *builder, p *store.ClaimParams) string {
	if p.OlderThan > 0 {
		return ""
	}
	return " AND o.seq <= COALESCE((SELECT w.seq FROM " + s.t.String() + " w WHERE w.state = 'pending' ORDER BY w.seq LIMIT 1), 0) + " +
		b.arg(s.windowOf(p)-1)
}

// windowOf is how many seqs, from the oldest pending message's, a polling claim of p looks at.
func (s *Store) windowOf(p *store.ClaimParams) int64 {
	return max(s.windowSize.Load(), int64(minWindow*p.Limit))
}

// sized sets the next claim's window after a claim of limit that got got messages.
func (s *Store) sized(p *store.ClaimParams, got int) {
	if p.OlderThan > 0 {
		return
	}
	if got >= p.Limit {
		s.windowSize.Store(0)
		return
	}
	s.windowSize.Store(min(s.windowOf(p)*2, 1<<50)) // far past any seq gap, short of overflowing
}

// parkedHolds is, with Config.StrictOrder, the condition that no earlier message of the
// key of the message aliased alias is parked (the "parked_key" index covers them).
func (s *Store) parkedHolds(alias string) string {
	if !s.strict {
		return ""
	}
	return " AND NOT EXISTS (SELECT 1 FROM " + s.t.String() + " pk WHERE pk.message_key = " + alias + ".message_key" +
		" AND pk.state = 'parked' AND pk.seq < " + alias + ".seq)"
}

const claimedColumns = "seq, id, topic, message_key, payload, headers, created_at, attempts"

// claimOnce claims with one UPDATE ... RETURNING. Alone it is atomic only where one writer
// runs at a time (SQLite); Postgres runs it under the claim lock.
func (s *Store) claimOnce(ctx context.Context, db store.Querier, token string, p *store.ClaimParams) ([]claimedRow, error) {
	b := builder{d: s.d}
	t := s.t.String()
	q := "UPDATE " + t + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease) + s.sweepMark(p)
	sub := "SELECT o.seq FROM " + t + " o WHERE " + s.claimable(&b, p) + " ORDER BY o.seq LIMIT " + b.arg(p.Limit)
	if s.d.Claims == ClaimsOneWriter {
		q += " WHERE seq IN (" + sub + ")"
	} else {
		// = ANY(ARRAY(...)) keeps Postgres on the primary key; IN (...) becomes a hash join
		// over the whole table.
		q += " WHERE seq = ANY(ARRAY(" + sub + " FOR UPDATE SKIP LOCKED))"
	}
	q += " RETURNING " + claimedColumns
	rows, err := db.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, err
	}
	return scanClaimed(rows)
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
// order across dispatchers. Postgres claims skip locked rows (FOR UPDATE SKIP LOCKED) rather
// than wait on rows that other dispatchers are marking; MySQL claims read without locks (see
// claimOnSession). A cheap look first keeps an idle outbox at one query per poll (its ORDER BY
// has the planner read the pending index from its head, not all of it); after a full claim,
// a sign of a backlog, the next claim goes straight to the lock.
func (s *Store) claimLocked(ctx context.Context, token string, p *store.ClaimParams) ([]claimedRow, error) {
	if !s.backlog.Load() {
		b := builder{d: s.d}
		var one int
		err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.t.String()+" o WHERE "+s.due("o")+s.sweepOnly(&b, p)+
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
	s.backlog.Store(err == nil && len(got) == p.Limit)
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
	// READ COMMITTED: each statement sees the claims committed before the lock was granted.
	// The messages are chosen by a plain read, not a locking one: SKIP LOCKED would pass over
	// an earlier message of a key that a statement of another session has locked (MySQL
	// locks every row an UPDATE scans) and claim a later one, out of order; a locking read
	// without it would wait for the application's transactions that insert messages. The
	// UPDATE then claims exactly those rows, if no other session changed one meanwhile.
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	b := builder{d: s.d}
	q := "SELECT " + claimedColumns + " FROM " + s.t.String() + " o WHERE " + s.claimable(&b, p) +
		" ORDER BY o.seq LIMIT " + b.arg(p.Limit)
	rows, err := tx.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, err
	}
	got, err := scanClaimed(rows)
	if err != nil || len(got) == 0 {
		return nil, err
	}
	seqs := make([]string, len(got))
	for i, r := range got {
		seqs[i] = strconv.FormatInt(r.seq, 10)
	}
	b = builder{d: s.d}
	upd := "UPDATE " + s.t.String() + " SET claim_token = " + b.arg(token) + ", claimed_until = " + b.nowPlus(p.Lease) + s.sweepMark(p)
	upd += " WHERE seq IN (" + strings.Join(seqs, ",") + ") AND state = 'pending' AND claimed_until <= " + s.d.Now
	res, err := tx.ExecContext(ctx, upd, b.args...)
	if err != nil {
		return nil, err
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(got)) {
		// A message changed between the read and the UPDATE (an operator, a log reader
		// marking it): claim nothing this time rather than a batch with a gap.
		return nil, err
	}
	return got, tx.Commit()
}
