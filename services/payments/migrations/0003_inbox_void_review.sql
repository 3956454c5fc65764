-- Processor events are stored raw in an inbox before they are handled, and marked handled only
-- by the handler registered for their type: an event whose type has no handler yet (refunds and
-- disputes, today) stays in the inbox until one is deployed, instead of being dropped as "seen".
CREATE TABLE processor_inbox (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    handled_at  timestamptz,
    -- What handling did, for an operator ("applied", "ignored: names no order of ours", ...).
    note        text NOT NULL DEFAULT '',
    -- Failed attempts of a handler; the recovery loop retries an unhandled event a bounded number of times.
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX processor_inbox_unhandled ON processor_inbox (type, received_at) WHERE handled_at IS NULL;

-- Events recorded before the inbox existed were applied or deliberately ignored; their payloads
-- were never kept, so they move in as handled, and their ids still dedupe a late replay.
INSERT INTO processor_inbox (event_id, type, payload, received_at, handled_at, note)
SELECT event_id, type, '{}'::jsonb, received_at, received_at, 'recorded before the inbox'
FROM processor_events;
DROP TABLE processor_events;

-- A purchase the processor refuses as a bad request before any PaymentIntent exists is answered
-- 400 without an order: its order is voided (kept, with its history, for us; never shown to the
-- partner, never announced) and its purchase_reference is free again for the corrected request.
ALTER TABLE orders ADD COLUMN voided_at timestamptz;
ALTER TABLE orders DROP CONSTRAINT orders_tenant_reference_key;
CREATE UNIQUE INDEX orders_tenant_reference_key ON orders (tenant_id, purchase_reference) WHERE voided_at IS NULL;

-- A succeeded PaymentIntent whose amount or currency differs from its order is never credited: the
-- order stays unsettled, held for an operator, with the reason here; recovery leaves it alone.
ALTER TABLE orders ADD COLUMN review_reason text;

-- Challenges left pending too long are cancelled by the recovery loop; it finds them by age.
CREATE INDEX orders_awaiting_action ON orders (updated_at) WHERE status = 'requires_action';
