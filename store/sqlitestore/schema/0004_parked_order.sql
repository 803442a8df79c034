-- Operators list parked messages oldest first (outbox parked, the console, Stats' parked
-- keys): without this index a table of millions of delivered rows is walked by its primary
-- key to find them.
CREATE INDEX IF NOT EXISTS {{.Index "parked"}} ON {{.Table}} (seq) WHERE state = 'parked';
