CREATE TABLE IF NOT EXISTS {{.Table}} (
    seq             BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT        NOT NULL UNIQUE,
    topic           TEXT        NOT NULL,
    message_key     TEXT        NOT NULL DEFAULT '',
    payload         BYTEA       NOT NULL,
    headers         TEXT        NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL,
    state           TEXT        NOT NULL DEFAULT 'pending', -- pending, delivered, parked
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    claimed_until   TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00', -- the epoch: not claimed
    claim_token     TEXT,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    -- 1 for a message that can hold back the later messages of its key: pending, and claimed
    -- or failed before. Claims look such messages up by key; they are few.
    held            SMALLINT    GENERATED ALWAYS AS (CASE WHEN state = 'pending' AND (claimed_until > '1970-01-01 00:00:00+00' OR attempts > 0) THEN 1 ELSE 0 END) STORED
);

-- Claims scan pending messages in write order.
CREATE INDEX IF NOT EXISTS {{.Index "pending"}} ON {{.Table}} (seq) WHERE state = 'pending';

CREATE INDEX IF NOT EXISTS {{.Index "held"}} ON {{.Table}} (message_key, seq) WHERE held = 1;
