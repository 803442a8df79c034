-- Claims change no indexed column: claims and log readers find the earlier messages of a key
-- through the messages by key and state.
ALTER TABLE `outbox` ADD INDEX `outbox_pending_key` (message_key, state, seq), DROP INDEX `outbox_held`;
