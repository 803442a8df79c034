package sqlstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/outboxgo/outbox/store"
)

var _ store.Operator = (*Store)(nil)

// Stats implements [store.Operator].
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	var (
		st     store.Stats
		oldest timeValue
		b      builder
	)
	b.d = s.d
	t := s.t.String()
	err := s.db.QueryRowContext(ctx, "SELECT (SELECT count(*) FROM "+t+" WHERE state = 'pending'),"+
		" (SELECT min(created_at) FROM "+t+" WHERE state = 'pending'),"+
		" (SELECT count(*) FROM "+t+" WHERE state = 'parked'),"+
		" (SELECT count(*) FROM "+t+" WHERE state = 'delivered' AND delivered_at >= "+b.nowPlus(-time.Minute)+")",
		b.args...).Scan(&st.Pending, &oldest, &st.Parked, &st.DeliveredLastMinute)
	if err != nil {
		return nil, fmt.Errorf("outbox: stats of %s: %w", s.t, err)
	}
	st.OldestPending = oldest.t
	if st.Parked > 0 {
		if st.ParkedKeys, err = s.parkedKeys(ctx); err != nil {
			return nil, fmt.Errorf("outbox: parked keys of %s: %w", s.t, err)
		}
	}
	return &st, nil
}

// parkedKeys lists the keys of the oldest parked messages. It looks at the oldest thousand
// only, so that a table with many parked messages costs a bounded read.
func (s *Store) parkedKeys(ctx context.Context) ([]store.ParkedKey, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT topic, message_key, count(*) FROM (SELECT topic, message_key, seq FROM "+s.t.String()+
		" WHERE state = 'parked' AND message_key <> '' ORDER BY seq LIMIT 1000) p GROUP BY topic, message_key ORDER BY min(seq) LIMIT "+
		strconv.Itoa(store.MaxParkedKeys))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []store.ParkedKey
	for rows.Next() {
		var k store.ParkedKey
		if err := rows.Scan(&k.Topic, &k.Key, &k.Parked); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// Requeue implements [store.Operator].
func (s *Store) Requeue(ctx context.Context, p *store.RequeueParams) (int64, error) {
	if len(p.IDs) == 0 && p.Topic == "" && p.Key == "" && !p.All {
		return 0, store.ErrNoSelection
	}
	b := builder{d: s.d}
	// An expired claim marks a requeued message as handed over to polling, as a log reader
	// marks the messages it leaves: a sweep beside a log reader takes it at once, whatever
	// its age, and the log reader hands over the later messages of its key behind it.
	q := "UPDATE " + s.t.String() + " SET state = 'pending', attempts = 0, next_attempt_at = " + s.d.Now +
		", claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Now + " WHERE state = 'parked'"
	if len(p.IDs) > 0 {
		q += " AND " + b.in("id", p.IDs)
	}
	if p.Topic != "" {
		q += " AND topic = " + b.arg(p.Topic)
	}
	if p.Key != "" {
		q += " AND message_key = " + b.arg(p.Key)
	}
	res, err := s.db.ExecContext(ctx, q, b.args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: requeue in %s: %w", s.t, err)
	}
	return res.RowsAffected()
}

// Purge implements [store.Operator].
func (s *Store) Purge(ctx context.Context, p *store.PurgeParams) (int64, error) {
	if p.OlderThan <= 0 {
		return 0, fmt.Errorf("outbox: PurgeParams.OlderThan must be positive, got %v", p.OlderThan)
	}
	batch := p.BatchSize
	if batch <= 0 {
		batch = 1000
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox: purge %s: %w", s.t, err)
	}
	defer conn.Close()
	if s.hooks.Lock != nil {
		unlock, ok, err := s.hooks.Lock(ctx, conn, s, "purge", 0)
		if err != nil || !ok {
			return 0, err
		}
		defer unlock()
	}
	t := s.t.String()
	var total int64
	for {
		b := builder{d: s.d}
		q := fmt.Sprintf(s.d.DeleteUpTo, t, "state = 'delivered' AND delivered_at < "+b.nowPlus(-p.OlderThan), b.arg(batch))
		res, err := conn.ExecContext(ctx, q, b.args...)
		if err != nil {
			return total, fmt.Errorf("outbox: purge %s: %w", s.t, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
		if n < int64(batch) {
			return total, nil
		}
	}
}
