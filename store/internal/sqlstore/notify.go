package sqlstore

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Subscribe implements [store.Notifier]. It hears messages written through this Store value,
// and, where the database can notify (Postgres), messages written by any process.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	if s.listener != nil && s.stopListener == nil {
		s.stopListener = s.startListener()
	}
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, ch)
			var stop func()
			if len(s.subs) == 0 {
				stop, s.stopListener = s.stopListener, nil
			}
			s.mu.Unlock()
			if stop != nil {
				stop()
			}
		})
	}
}

// startListener runs the listener until the returned function is called, restarting it with a
// backoff when its connection fails. Each (re)start wakes the subscribers, since
// notifications sent while it was not listening are lost.
func (s *Store) startListener() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait := time.Duration(0)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			err := s.listener(ctx, ListenerTarget{DB: s.db, Channel: s.t.channel()}, s.signal)
			if ctx.Err() != nil {
				return
			}
			wait = min(max(2*wait, 100*time.Millisecond), 10*time.Second)
			s.log.Warn("notification listener stopped; dispatchers poll until it is back",
				slog.Any("error", err), slog.Duration("retry_in", wait))
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// signal wakes every subscriber without blocking; pending signals coalesce.
func (s *Store) signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
