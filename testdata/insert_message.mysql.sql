-- An outbox message written by a program that does not use this library (another language, a
-- migration, the mysql client), in the same transaction as its domain rows. {{table}} is the
-- outbox table; times are UTC.
INSERT INTO {{table}} (id, topic, message_key, payload, headers, created_at)
VALUES ('0190f3a2-7b1c-7000-8000-00000000a001', 'payments', 'pay-42',
        '{"externalId":"pay-42","amount":"12.50","paymentStatus":"Completed"}',
        '{"event_type":"PaymentCompleted"}', UTC_TIMESTAMP(6));
