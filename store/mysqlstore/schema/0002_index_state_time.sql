-- Operators count and purge messages by state and delivery time.
ALTER TABLE {{.Table}} ADD INDEX {{.Index "state_delivered"}} (state, delivered_at);
