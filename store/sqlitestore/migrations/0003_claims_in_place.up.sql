-- Claims change no indexed column: claims and log readers find the earlier messages of a key
-- through the pending messages by key.
CREATE INDEX IF NOT EXISTS "outbox_pending_key" ON "outbox" (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS "outbox_held";

-- With StrictOrder, a parked message holds back its key: claims look for one by key.
CREATE INDEX IF NOT EXISTS "outbox_parked_key" ON "outbox" (message_key, seq) WHERE state = 'parked';
