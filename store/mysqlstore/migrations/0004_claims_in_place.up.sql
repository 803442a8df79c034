-- With StrictOrder, claims look for a parked message of a key before an earlier one.
ALTER TABLE `outbox` ADD INDEX `outbox_state_key` (state, message_key, seq);
