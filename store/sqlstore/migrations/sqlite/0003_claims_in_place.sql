-- Claims change no indexed column: claims and log readers find the earlier messages of a key
-- through the pending messages by key.
CREATE INDEX IF NOT EXISTS {{.Index "pending_key"}} ON {{.Table}} (message_key, seq) WHERE state = 'pending';

DROP INDEX IF EXISTS {{.Related "held"}};
