-- Operators count parked messages and purge delivered ones by delivery time. Pending messages
-- stay out of this index, so that claims keep scanning the pending index in write order.
CREATE INDEX IF NOT EXISTS {{.Index "state_delivered"}} ON {{.Table}} (state, delivered_at) WHERE state <> 'pending';
