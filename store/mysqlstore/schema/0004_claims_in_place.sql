-- With StrictOrder, claims look for a parked message of a key before an earlier one.
ALTER TABLE {{.Table}} ADD INDEX {{.Index "state_key"}} (state, message_key, seq);
