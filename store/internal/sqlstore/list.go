package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
)

// List implements [store.Engine].
func (s *Store) List(ctx context.Context, p *store.ListParams) (*store.ListResult, error) {
	var db store.Querier = s.db
	if !isNil(p.DB) {
		db = unwrapQuerier(p.DB)
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	b := builder{d: s.d}
	var where []string
	if p.State != "" {
		where = append(where, "state = "+b.arg(string(p.State)))
	}
	if p.Topic != "" {
		where = append(where, "topic = "+b.arg(p.Topic))
	}
	if p.Key != "" {
		where = append(where, "message_key = "+b.arg(p.Key))
	}
	q := "SELECT " + columns + " FROM " + s.t.String()
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq LIMIT " + b.arg(limit)
	rows, err := db.QueryContext(ctx, q, b.args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
	}
	defer rows.Close()
	res := &store.ListResult{}
	for rows.Next() {
		var (
			m                                     store.StoredMessage
			seq                                   int64
			headers, state                        string
			created, next, claimedUntil, delivery timeValue
			token, lastErr                        sql.NullString
		)
		if err := rows.Scan(&seq, &m.ID, &m.Topic, &m.Key, &m.Payload, &headers, &created, &state, &m.Attempts,
			&next, &claimedUntil, &token, &lastErr, &delivery); err != nil {
			return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
		}
		if m.Headers, err = store.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %s: %w", m.ID, err)
		}
		m.CreatedAt, m.NextAttemptAt, m.DeliveredAt = created.t, next.t, delivery.t
		m.State, m.LastError = store.State(state), lastErr.String
		res.Messages = append(res.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list %s: %w", s.t, err)
	}
	return res, nil
}

func unwrapQuerier(db store.Querier) store.Querier {
	if e, ok := db.(store.Execer); ok {
		if q, ok := unwrap(e).(store.Querier); ok {
			return q
		}
	}
	return db
}

// timeValue scans a time stored natively, as text (MySQL without parseTime) or as integer unix
// microseconds (SQLite). NULL and the epoch scan as the zero time.
type timeValue struct{ t time.Time }

func (v *timeValue) Scan(src any) error {
	switch x := src.(type) {
	case nil:
		v.t = time.Time{}
	case int64:
		if x == 0 {
			v.t = time.Time{}
		} else {
			v.t = time.UnixMicro(x).UTC()
		}
	case time.Time:
		if x.Unix() <= 0 {
			v.t = time.Time{}
		} else {
			v.t = x.UTC()
		}
	case []byte:
		return v.Scan(string(x))
	case string: // MySQL without parseTime
		t, err := time.ParseInLocation("2006-01-02 15:04:05.999999", x, time.UTC)
		if err != nil {
			return fmt.Errorf("outbox: cannot scan %q as a time: %w", x, err)
		}
		return v.Scan(t)
	default:
		return fmt.Errorf("outbox: cannot scan %T as a time", src)
	}
	return nil
}
