package idempotency

import "time"

// SetNow replaces the inbox's clock.
func (i *Inbox) SetNow(now func() time.Time) { i.now = now }

// TimeArg is t as the inbox stores it in handled_at, for tests that write rows directly.
func (i *Inbox) TimeArg(t time.Time) any { return i.timeArg(t) }
