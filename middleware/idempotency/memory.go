package idempotency

import (
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Memory drops duplicate messages by id, in memory.
//
// FOR TESTS ONLY. DO NOT USE IN PRODUCTION. It has no transaction (TxFromContext reports
// false under it), so a handler's effects are not tied to the id; it forgets everything when
// the process ends, and it is not shared between processes. It exists so that unit tests of a
// handler can run the same middleware chain without a database.
//
// Like [Inbox], it refuses messages without a usable id with [ErrNoMessageID], records an id
// only when the handler succeeds, and makes a concurrent delivery of an id wait for the one in
// progress. Its zero value is ready to use.
type Memory struct {
	mu       sync.Mutex
	seen     map[string]struct{}
	inflight map[string]chan struct{} // closed when that delivery ends
}

// NewMemory returns an empty [Memory]. FOR TESTS ONLY.
func NewMemory() *Memory { return &Memory{} }

// Middleware runs h at most once per message id that it succeeds for. FOR TESTS ONLY.
func (m *Memory) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		id := msg.UUID
		if err := checkID(id); err != nil {
			return nil, err
		}
		var done chan struct{}
		for done == nil {
			m.mu.Lock()
			if _, ok := m.seen[id]; ok {
				m.mu.Unlock()
				return nil, nil
			}
			if wait, ok := m.inflight[id]; ok {
				m.mu.Unlock()
				select {
				case <-wait:
					continue
				case <-msg.Context().Done():
					return nil, msg.Context().Err()
				}
			}
			if m.inflight == nil {
				m.inflight = map[string]chan struct{}{}
				m.seen = map[string]struct{}{}
			}
			done = make(chan struct{})
			m.inflight[id] = done
			m.mu.Unlock()
		}

		ok := false
		defer func() { // also when h panics
			m.mu.Lock()
			delete(m.inflight, id)
			if ok {
				m.seen[id] = struct{}{}
			}
			m.mu.Unlock()
			close(done)
		}()
		out, err := h(msg)
		if err != nil {
			return nil, err
		}
		ok = true
		return out, nil
	}
}

// Processed reports whether a message with the id was handled successfully.
func (m *Memory) Processed(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.seen[id]
	return ok
}
