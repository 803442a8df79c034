-- Operators count and purge messages by state and delivery time.
CREATE INDEX IF NOT EXISTS "outbox_state_delivered" ON "outbox" (state, delivered_at);
