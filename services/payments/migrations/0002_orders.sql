-- Orders: one per (tenant, purchase_reference), with the lifecycle of the seed.
CREATE TABLE orders (
    order_id           text PRIMARY KEY,
    tenant_id          text NOT NULL,
    purchase_reference text NOT NULL,
    request_hash       bytea NOT NULL,
    environment        text NOT NULL,
    player_email       text NOT NULL,
    identity_id        text NOT NULL,
    usd_cents          bigint NOT NULL CHECK (usd_cents > 0),
    currency_amount    bigint NOT NULL CHECK (currency_amount = usd_cents * 10),
    currency_name      text NOT NULL,
    payment_method_id  text NOT NULL,
    payment_intent_id  text,
    client_secret      text,
    status             text NOT NULL CHECK (status IN (
                           'pending_payment', 'requires_action', 'completed', 'failed', 'cancelled',
                           'refunded', 'disputed_lost')),
    failure_code       text,
    failure_message    text,
    decline_code       text,
    transaction_id     text,
    new_balance        bigint,
    metadata           jsonb NOT NULL DEFAULT '{}',
    -- While a worker talks to the processor for this order, nobody else does (a lease).
    processing_until   timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    CONSTRAINT orders_tenant_reference_key UNIQUE (tenant_id, purchase_reference)
);
CREATE UNIQUE INDEX orders_payment_intent ON orders (payment_intent_id) WHERE payment_intent_id IS NOT NULL;
CREATE INDEX orders_player_recent ON orders (tenant_id, player_email, created_at);
CREATE INDEX orders_unsettled ON orders (processing_until) WHERE status IN ('pending_payment', 'requires_action');

-- The append-only audit trail of every transition.
CREATE TABLE order_transitions (
    id          bigserial PRIMARY KEY,
    order_id    text NOT NULL REFERENCES orders (order_id),
    from_status text NOT NULL,
    to_status   text NOT NULL,
    source      text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_transitions_order ON order_transitions (order_id, id);
CREATE RULE order_transitions_no_update AS ON UPDATE TO order_transitions DO INSTEAD NOTHING;
CREATE RULE order_transitions_no_delete AS ON DELETE TO order_transitions DO INSTEAD NOTHING;

-- Processor webhooks already applied (dedupe on the processor's event id).
CREATE TABLE processor_events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (tenant, player): locked while a purchase checks and reserves the player's caps,
-- so concurrent purchases can never together exceed one.
CREATE TABLE player_locks (
    tenant_id    text NOT NULL,
    player_email text NOT NULL,
    PRIMARY KEY (tenant_id, player_email)
);
