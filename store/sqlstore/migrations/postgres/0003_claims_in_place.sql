-- Claims update their rows in place (heap-only tuples): no index covers a column a claim
-- changes, and pages keep room for the new row versions. Claims and log readers find the
-- earlier messages of a key through the pending messages by key.
CREATE INDEX IF NOT EXISTS {{.Index "pending_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS {{.Related "held"}};

ALTER TABLE {{.Table}} SET (fillfactor = 50);

-- With StrictOrder, a parked message holds back its key: claims look for one by key.
CREATE INDEX IF NOT EXISTS {{.Index "parked_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'parked';
