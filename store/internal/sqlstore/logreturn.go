package sqlstore

import "sync/atomic"

// lostLog is what the log readers of a store found lost, between their tries.
type lostLog struct {
	// reported is set once a reader said that the log position it reads from is lost.
	reported atomic.Bool
}

// RecoversLostLog reports whether the store's log reader starts again from the log's current
// position by itself when the position it reads from is lost (a dropped or invalidated
// Postgres slot, a purged binlog position): [Config].ManualLogRecovery is not set, and the
// store is not log-only, whose lost messages are in no table.
func (s *Store) RecoversLostLog() bool { return !s.manualLog && s.logOnly == nil }

// LogLost records that a log reader found the position it reads from lost, and returns
// whether an earlier try had found it so already. A reader that recovers the log says so at
// its first try, with an error wrapping store.ErrLogUnavailable, so that the dispatchers poll
// meanwhile, and starts again from the log's current position at its next try.
func (s *Store) LogLost() (before bool) { return s.lostLog.reported.Swap(true) }

// LogFound clears what [Store.LogLost] recorded: the reader found its position, or made a
// new one.
func (s *Store) LogFound() { s.lostLog.reported.Store(false) }

// CatchUpTo makes a log reader that starts from a new position (a slot it just created, the
// server's current binlog position) catch up first. upTo is at least the highest seq written
// before that position: such messages are not in the log, and until those still pending are
// delivered, the reader hands the later messages of their keys over to the sweep, which
// claims them first, in write order, so that no key's later message overtakes them. Call it
// after [Store.OpenLog] began, before the reader publishes anything. It looks further than
// the lookup a reader otherwise makes on its first batch (messages pending below that
// batch's lowest seq), which misses a message written before the position whose seq is
// above that of a later commit.
func (s *Store) CatchUpTo(upTo int64) { s.catchUp.Store(max(upTo, 0)) }
