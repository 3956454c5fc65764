-- The order an event is about (its data.order_id), kept as the event is recorded, so that an
-- order's deliveries can be listed (the operators' console shows them on the order's timeline).
-- Events recorded before this migration have none.
ALTER TABLE events ADD COLUMN order_id text;
CREATE INDEX events_order ON events (order_id) WHERE order_id IS NOT NULL;
