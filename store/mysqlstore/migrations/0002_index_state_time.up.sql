-- Operators count and purge messages by state and delivery time.
ALTER TABLE `outbox` ADD INDEX `outbox_state_delivered` (state, delivered_at);
