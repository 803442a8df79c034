CREATE TABLE IF NOT EXISTS {{.Table}} (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    topic           TEXT    NOT NULL,
    message_key     TEXT    NOT NULL DEFAULT '',
    payload         BLOB    NOT NULL,
    headers         TEXT    NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL, -- unix microseconds, as are all times here
    state           TEXT    NOT NULL DEFAULT 'pending', -- pending, delivered, parked
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    claimed_until   INTEGER NOT NULL DEFAULT 0,
    claim_token     TEXT,
    last_error      TEXT,
    delivered_at    INTEGER
);

-- Claims scan pending messages in write order.
CREATE INDEX IF NOT EXISTS {{.Index "pending"}} ON {{.Table}} (seq) WHERE state = 'pending';

-- Claims look for an earlier message of the same key that holds the key back: one that is
-- claimed or waits for a retry. Only messages ever claimed or failed can, and they are few.
CREATE INDEX IF NOT EXISTS {{.Index "held"}} ON {{.Table}} (message_key, seq)
    WHERE state = 'pending' AND (claimed_until > 0 OR attempts > 0);
