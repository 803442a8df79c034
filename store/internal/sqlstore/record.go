package sqlstore

import (
	"context"
	"fmt"

	"github.com/outboxgo/outbox/store"
)

// MarkDelivered implements [store.Engine]. Messages this store claimed are found by seq.
func (s *Store) MarkDelivered(ctx context.Context, p *store.MarkDeliveredParams) error {
	seqs, ids := s.claimed.take(p.IDs)
	err := inChunks(seqs, s.d.MaxParams-8, func(seqs []int64) error {
		b := builder{d: s.d}
		return s.mark(ctx, &b, b.inSeqs("seq", seqs), len(seqs), p.Delete)
	})
	if err != nil {
		return err
	}
	return s.inChunks(ids, func(ids []string) error {
		b := builder{d: s.d}
		return s.mark(ctx, &b, b.in("id", ids), len(ids), p.Delete)
	})
}

// mark records n messages that cond selects as delivered.
func (s *Store) mark(ctx context.Context, b *builder, cond string, n int, del bool) error {
	if _, err := s.db.ExecContext(ctx, s.markDelivered(cond, del, true), b.args...); err != nil {
		return fmt.Errorf("outbox: mark %d messages delivered in %s: %w", n, s.t, err)
	}
	return nil
}

// markDelivered is the statement that records the pending messages that cond selects as
// delivered: it marks them, or with del deletes them. With async, where the database allows
// it, the statement's own transaction does not wait for the WAL flush.
func (s *Store) markDelivered(cond string, del, async bool) string {
	async = async && s.d.AsyncCommit != ""
	q := "UPDATE " + s.t.String() + " SET state = 'delivered', delivered_at = " + s.d.Now + ", claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Epoch
	if async {
		q += " FROM " + s.d.AsyncCommit
	}
	if del {
		q = "DELETE FROM " + s.t.String()
		if async {
			q += " USING " + s.d.AsyncCommit
		}
	}
	return q + " WHERE state = 'pending' AND " + cond
}

// Release implements [store.Engine].
func (s *Store) Release(ctx context.Context, p *store.ReleaseParams) error {
	if p.Token == "" {
		return nil // no claim has an empty token, and rows that no claim holds may carry one
	}
	if p.All {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Epoch + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token)
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: release the messages of a claim in %s: %w", s.t, err)
		}
		return nil
	}
	s.claimed.forget(p.IDs...)
	return s.inChunks(p.IDs, func(ids []string) error {
		b := builder{d: s.d}
		q := "UPDATE " + s.t.String() + " SET claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Epoch + " WHERE claim_token = " + b.arg(p.Token) +
			" AND " + b.in("id", ids)
		if _, err := s.db.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: release %d messages in %s: %w", len(ids), s.t, err)
		}
		return nil
	})
}

// ExtendLease implements [store.LeaseExtender].
func (s *Store) ExtendLease(ctx context.Context, p *store.ExtendLeaseParams) (int64, error) {
	if p.Lease <= 0 {
		return 0, fmt.Errorf("outbox: ExtendLeaseParams.Lease must be positive, got %v", p.Lease)
	}
	if p.Token == "" {
		return 0, nil // see Release
	}
	b := builder{d: s.d}
	q := "UPDATE " + s.t.String() + " SET claimed_until = " + b.nowPlus(p.Lease) + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token)
	res, err := s.db.ExecContext(ctx, q, b.args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: extend the lease of a claim in %s: %w", s.t, err)
	}
	return res.RowsAffected()
}

func (s *Store) inChunks(ids []string, f func([]string) error) error {
	return inChunks(ids, s.d.MaxParams-8, f)
}

// Fail implements [store.Engine]. All failures are recorded in one transaction.
func (s *Store) Fail(ctx context.Context, p *store.FailParams) error {
	if len(p.Failures) == 0 || p.Token == "" { // see Release
		return nil
	}
	ids := make([]string, len(p.Failures))
	for i, f := range p.Failures {
		ids[i] = f.ID
	}
	s.claimed.forget(ids...)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: record failures in %s: %w", s.t, err)
	}
	defer tx.Rollback()
	for _, f := range p.Failures {
		b := builder{d: s.d}
		state := store.Pending
		if f.Park {
			state = store.Parked
		}
		q := "UPDATE " + s.t.String() + " SET attempts = attempts + 1, state = " + b.arg(string(state)) +
			", last_error = " + b.arg(f.Error) + ", next_attempt_at = " + b.nowPlus(f.RetryAfter) +
			", claim_token = " + s.d.noToken() + ", claimed_until = " + s.d.Epoch + " WHERE state = 'pending' AND claim_token = " + b.arg(p.Token) +
			" AND id = " + b.arg(f.ID)
		if _, err := tx.ExecContext(ctx, q, b.args...); err != nil {
			return fmt.Errorf("outbox: record failure of %s in %s: %w", f.ID, s.t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: record failures in %s: %w", s.t, err)
	}
	return nil
}
