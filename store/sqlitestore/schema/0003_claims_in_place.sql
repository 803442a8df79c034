-- Claims change no indexed column: claims and log readers find the earlier messages of a key
-- through the pending messages by key.
CREATE INDEX IF NOT EXISTS {{.Index "pending_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS {{.Related "held"}};

-- With StrictOrder, a parked message holds back its key: claims look for one by key.
CREATE INDEX IF NOT EXISTS {{.Index "parked_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'parked';
