-- Operators count and purge messages by state and delivery time.
CREATE INDEX IF NOT EXISTS {{.Index "state_delivered"}} ON {{.Table}} (state, delivered_at);
