package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Limits on the fields of a [Message]. They keep every message storable in each supported
// database and carriable by every watermill publisher.
const (
	// MaxTopicLen is the longest topic, in bytes.
	MaxTopicLen = 255
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 255
	// MaxIDLen is the longest caller-chosen message id, in bytes.
	MaxIDLen = 64
	// MaxHeaderNameLen is the longest header name, in bytes.
	MaxHeaderNameLen = 255

	// DefaultMaxPayloadBytes is the default limit on a message payload: 1,000,000 bytes.
	// A message is published with its key and headers, the dispatcher's among them, and a
	// broker limits the whole: Kafka, by default, to 1,048,588 bytes for a record batch. This
	// limit leaves 48,588 bytes of that to the rest: record and batch overhead, a key of up
	// to MaxKeyLen and the dispatcher's headers take under 1 KiB, the message's own headers
	// the remaining 47 KB or so. So a message Write accepts by default is one the Kafka
	// publisher delivers to a broker with default settings. 1 MiB, the limit before, was
	// not: the overhead took such a payload past the broker's limit, and the message was
	// parked at once. Headers do not count against this limit.
	DefaultMaxPayloadBytes = 1_000_000

	// ReservedHeaderPrefix starts the names of the headers a dispatcher adds to every
	// published message (the message id, key and creation time); messages may not use it.
	ReservedHeaderPrefix = "outbox_"
)

// Message is one event to publish. The zero value is not valid: Topic is required.
type Message struct {
	// ID identifies the message across retries and deliveries; it becomes the watermill
	// message UUID so that consumers can drop duplicates. Write sets a new UUIDv7 when it is
	// empty; set it yourself (see [NewID]) when the id must be known before commit.
	ID string
	// Topic is where the message is published. Required.
	Topic string
	// Key orders messages: messages with the same topic and non-empty key are published in the
	// order they were written, and a publisher may use the key as the partition key. A message
	// is not claimed while an earlier one with its key waits for a retry. Messages with an
	// empty key have no order among each other.
	Key string
	// Payload is published as is.
	Payload []byte
	// Headers travel as watermill metadata (Kafka record headers). Names must be non-empty;
	// names and values must be valid UTF-8 without NUL bytes.
	Headers map[string]string
	// CreatedAt is the time Write stored the message. Ignored on input.
	CreatedAt time.Time
}

// NewID returns a new message id: a UUIDv7, so ids sort by creation time.
func NewID() string {
	return uuid.Must(uuid.NewV7()).String()
}

// WriteIDs writes msgs through st as [Engine.Write] does, and returns the id of each message,
// in order: the one the caller set, or the one given to it ([NewID]). msgs is not changed.
func WriteIDs(ctx context.Context, st Writer, db Execer, msgs ...Message) ([]string, error) {
	withIDs := slices.Clone(msgs)
	ids := make([]string, len(msgs))
	for i := range withIDs {
		if withIDs[i].ID == "" {
			withIDs[i].ID = NewID()
		}
		ids[i] = withIDs[i].ID
	}
	if err := st.Write(ctx, db, withIDs...); err != nil {
		return nil, err
	}
	return ids, nil
}

// Validate checks m against the limits above and a payload limit of maxPayload bytes.
// It reports the first problem found as an error wrapping one of the Err sentinels.
func (m *Message) Validate(maxPayload int) error {
	switch {
	case m.Topic == "":
		return ErrEmptyTopic
	case len(m.Topic) > MaxTopicLen:
		return fmt.Errorf("%w: topic is %d bytes, the limit is %d", ErrInvalidTopic, len(m.Topic), MaxTopicLen)
	case !printable(m.Topic):
		return fmt.Errorf("%w: %q has invalid UTF-8 or control characters", ErrInvalidTopic, m.Topic)
	case len(m.Key) > MaxKeyLen:
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrInvalidKey, len(m.Key), MaxKeyLen)
	case !utf8.ValidString(m.Key) || hasNUL(m.Key):
		return fmt.Errorf("%w: key has invalid UTF-8 or a NUL byte", ErrInvalidKey)
	case len(m.ID) > MaxIDLen:
		return fmt.Errorf("%w: id is %d bytes, the limit is %d", ErrInvalidID, len(m.ID), MaxIDLen)
	case m.ID != "" && !printable(m.ID):
		return fmt.Errorf("%w: %q has invalid UTF-8 or control characters", ErrInvalidID, m.ID)
	case len(m.Payload) > maxPayload:
		return fmt.Errorf("%w: payload is %d bytes, the limit is %d", ErrPayloadTooLarge, len(m.Payload), maxPayload)
	}
	for name, value := range m.Headers {
		switch {
		case name == "":
			return fmt.Errorf("%w: empty name", ErrInvalidHeader)
		case len(name) > MaxHeaderNameLen:
			return fmt.Errorf("%w: name is %d bytes, the limit is %d", ErrInvalidHeader, len(name), MaxHeaderNameLen)
		case !printable(name):
			return fmt.Errorf("%w: name %q has invalid UTF-8 or control characters", ErrInvalidHeader, name)
		case strings.HasPrefix(name, ReservedHeaderPrefix):
			return fmt.Errorf("%w: name %q uses the reserved prefix %q", ErrInvalidHeader, name, ReservedHeaderPrefix)
		case !utf8.ValidString(value) || hasNUL(value):
			return fmt.Errorf("%w: value of %q has invalid UTF-8 or a NUL byte", ErrInvalidHeader, name)
		}
	}
	return nil
}

// EncodeHeaders returns the JSON object stored for headers ("{}" when there are none).
func EncodeHeaders(h map[string]string) (string, error) {
	if len(h) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidHeader, err)
	}
	return string(b), nil
}

// DecodeHeaders parses what [EncodeHeaders] stored.
func DecodeHeaders(s string) (map[string]string, error) {
	if s == "" || s == "{}" {
		return nil, nil
	}
	var h map[string]string
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("outbox: stored headers are not a JSON object of strings: %w", err)
	}
	return h, nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }
