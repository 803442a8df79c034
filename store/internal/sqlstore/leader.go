package sqlstore

import (
	"context"
	"fmt"
	"time"
)

// StandbyRetry is how often a standby tries to take the log reader's lock.
const StandbyRetry = time.Second

// WaitForLead waits until take gets the outbox's log lock. While another instance holds it,
// this one is a standby: it says so once through standby, and tries again every StandbyRetry.
func WaitForLead(ctx context.Context, take func(context.Context) (bool, error), standby func()) error {
	reported := false
	for {
		got, err := take(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // a driver may report a query it cancelled as a bad connection
			}
			return fmt.Errorf("outbox: take the log reader's lock: %w", err)
		}
		if got {
			return nil
		}
		if !reported {
			standby()
			reported = true
		}
		timer := time.NewTimer(StandbyRetry)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}
