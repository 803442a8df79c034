-- Claims update their rows in place (heap-only tuples): no index covers a column a claim
-- changes, and pages keep room for the new row versions. Claims and log readers find the
-- earlier messages of a key through the pending messages by key.
CREATE INDEX IF NOT EXISTS {{.Index "pending_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS {{.Related "held"}};

ALTER TABLE {{.Table}} SET (fillfactor = 50);

-- With StrictOrder, a parked message holds back its key: claims look for one by key.
CREATE INDEX IF NOT EXISTS {{.Index "parked_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'parked';

-- The log reader looks up the messages of its batch's keys that are held beyond a claim:
-- failed, handed over, requeued, claimed by a sweep or found claimed (next_attempt_at set).
-- Claims leave next_attempt_at alone, so the index stays small and claims stay in place.
CREATE INDEX IF NOT EXISTS {{.Index "held_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'pending' AND next_attempt_at > '1970-01-01 00:00:00+00';
