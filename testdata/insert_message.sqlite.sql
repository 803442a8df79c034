-- An outbox message written by a program that does not use this library (another language, a
-- migration, the sqlite3 shell), in the same transaction as its domain rows. {{table}} is the
-- outbox table; times are integer unix microseconds.
-- The id is the message's identity for its consumers (the watermill UUID and the outbox_id
-- header) and must be new to the table. This example gives a fixed one: to have the database
-- make a fresh one (a random UUID, version 4), write
--   lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
--   substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) ||
--   substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))
-- in its place.
INSERT INTO {{table}} (id, topic, message_key, payload, headers, created_at)
VALUES ('0190f3a2-7b1c-7000-8000-00000000a001', 'payments', 'pay-42',
        CAST('{"externalId":"pay-42","amount":"12.50","paymentStatus":"Completed"}' AS BLOB),
        '{"event_type":"PaymentCompleted"}', CAST(unixepoch('subsec') * 1000000 AS INTEGER));
