-- Claims update their rows in place (heap-only tuples): no index covers a column a claim
-- changes, and pages keep room for the new row versions. Claims and log readers find the
-- earlier messages of a key through the pending messages by key.
CREATE INDEX IF NOT EXISTS "outbox_pending_key" ON "outbox" (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS "outbox_held";

ALTER TABLE "outbox" SET (fillfactor = 50);

-- With StrictOrder, a parked message holds back its key: claims look for one by key.
CREATE INDEX IF NOT EXISTS "outbox_parked_key" ON "outbox" (message_key, seq) WHERE state = 'parked';
