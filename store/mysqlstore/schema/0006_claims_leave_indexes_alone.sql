-- Claims and marks change no secondary index but those on state: the "held" index moved an
-- entry for every message claimed and again for every message marked, a third of a polling
-- drain's time. Claims find the earlier messages of a key through "state_key" instead, as
-- Postgres's do through its pending messages by key. The log reader looks up the messages
-- that wait for a retry time (failed, handed over, claimed by a sweep), which claims do not
-- change: "waiting" indexes them, as Postgres's partial "held_key" index does. The step
-- rebuilds the table once. The "held" column stays for dispatchers of earlier versions
-- during an upgrade.
ALTER TABLE {{.Table}}
    ADD COLUMN waiting TINYINT GENERATED ALWAYS AS (CASE WHEN state = 'pending' AND next_attempt_at > '1970-01-01 00:00:00' THEN 1 ELSE 0 END) STORED,
    ADD INDEX {{.Index "waiting_key"}} (waiting, message_key, seq),
    DROP INDEX {{.Index "held"}};
