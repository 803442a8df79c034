-- An outbox message written by a program that does not use this library (another language, a
-- migration, psql), in the same transaction as its domain rows. {{table}} is the outbox table.
-- The id is the message's identity for its consumers (the watermill UUID and the outbox_id
-- header) and must be new to the table. This example gives a fixed one: to have the database
-- make a fresh one, write
--   gen_random_uuid()::text
-- in its place (on Postgres 18, uuidv7()::text makes one that sorts by time, as Write's do).
INSERT INTO {{table}} (id, topic, message_key, payload, headers, created_at)
VALUES ('0190f3a2-7b1c-7000-8000-00000000a001', 'payments', 'pay-42',
        convert_to('{"externalId":"pay-42","amount":"12.50","paymentStatus":"Completed"}', 'UTF8'),
        '{"event_type":"PaymentCompleted"}', now());
-- Optional: wake the dispatchers at commit instead of at their next poll.
SELECT pg_notify('outbox_outbox', '');
