CREATE TABLE IF NOT EXISTS {{.Table}} (
    seq             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id              VARCHAR(64)  NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    message_key     VARCHAR(255) NOT NULL DEFAULT '',
    payload         LONGBLOB     NOT NULL,
    headers         LONGTEXT     NOT NULL,
    created_at      DATETIME(6)  NOT NULL, -- UTC, as are all times here
    state           VARCHAR(16)  NOT NULL DEFAULT 'pending', -- pending, delivered, parked
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6)  NOT NULL DEFAULT '1970-01-01 00:00:00',
    claimed_until   DATETIME(6)  NOT NULL DEFAULT '1970-01-01 00:00:00', -- the epoch: not claimed
    claim_token     VARCHAR(36)  NULL,
    last_error      TEXT         NULL,
    delivered_at    DATETIME(6)  NULL,
    -- 1 for a message that can hold back the later messages of its key: pending, and claimed
    -- or failed before. Claims look such messages up by key; they are few.
    held            TINYINT      GENERATED ALWAYS AS (CASE WHEN state = 'pending' AND (claimed_until > '1970-01-01 00:00:00' OR attempts > 0) THEN 1 ELSE 0 END) STORED,
    UNIQUE KEY {{.Index "id"}} (id),
    -- Claims scan pending messages in write order.
    KEY {{.Index "pending"}} (state, seq),
    KEY {{.Index "held"}} (held, message_key, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
