package dispatcher

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/outboxgo/outbox/store"
)

// holdClaim keeps a claim's lease alive while its batch is published and recorded, where the
// store can extend leases: the lease can then be short, so that the messages of a dispatcher
// that died come back within seconds, while a batch may still take as long as the broker
// needs. It extends the lease every third of it, and returns a function that stops and
// reports until when the claim was last known to hold.
func (d *Dispatcher) holdClaim(ctx context.Context, token string, claimedAt time.Time) (release func() time.Time) {
	heldUntil := claimedAt.Add(d.cfg.Lease)
	ext, ok := d.st.(store.LeaseExtender)
	if !ok {
		return func() time.Time { return heldUntil }
	}
	var (
		mu   sync.Mutex
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(d.cfg.Lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			at := time.Now()
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.Lease/3)
			held, err := ext.ExtendLease(ectx, &store.ExtendLeaseParams{Token: token, Lease: d.cfg.Lease})
			cancel()
			if err != nil {
				d.log.Warn("cannot extend the lease of a batch in flight; other dispatchers may publish its messages too once it runs out",
					slog.Any("error", err), slog.Time("lease_until", heldUntil))
				continue
			}
			if held == 0 {
				// Recorded already, or the lease ran out and another dispatcher claimed them:
				// either way the claim holds nothing to keep.
				continue
			}
			mu.Lock()
			heldUntil = at.Add(d.cfg.Lease)
			mu.Unlock()
		}
	})
	return func() time.Time {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return heldUntil
	}
}
