-- Partner payouts (issue 15): requests, their review, the ACH payment order, and the ledger writes
-- each status calls for. Account numbers are stored sealed (AES-GCM, key id beside them) with
-- their last four digits; nothing else of them is kept.
CREATE TABLE payouts (
    payout_id              text PRIMARY KEY,
    tenant_id              text NOT NULL,
    environment            text NOT NULL,
    idempotency_key        text NOT NULL,
    request_hash           bytea NOT NULL,
    requested_by           text NOT NULL,  -- "partner", or the operator who asked on the tenant's behalf
    usd_cents              bigint NOT NULL CHECK (usd_cents > 0),
    amount_minor           bigint NOT NULL CHECK (amount_minor = usd_cents * 10),
    contact_email          text NOT NULL,
    account_holder_name    text NOT NULL,
    routing_number         text NOT NULL CHECK (routing_number ~ '^[0-9]{9}$'),
    account_type           text NOT NULL CHECK (account_type IN ('checking', 'savings')),
    account_kid            text NOT NULL,
    account_sealed         bytea NOT NULL,
    account_last4          text NOT NULL CHECK (account_last4 ~ '^[0-9]{4}$'),
    approvals_required     integer NOT NULL CHECK (approvals_required IN (1, 2)),
    status                 text NOT NULL CHECK (status IN (
                               'creating', 'requested', 'approved', 'processing', 'completed', 'returned',
                               'rejected', 'cancelled', 'failed')),
    reason                 text,  -- a rejection's, a failure's, a cancel's
    provider_order_id      text UNIQUE,
    provider_status        text,
    return_code            text,
    return_reason          text,
    hold_transaction_id    text,
    settle_transaction_id  text,
    release_transaction_id text,
    return_transaction_id  text,
    processing_until       timestamptz,
    dispatch_started_at    timestamptz,  -- the first time the payment order was asked for
    polled_at              timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    approved_at            timestamptz,
    completed_at           timestamptz,
    ended_at               timestamptz,
    CONSTRAINT payouts_tenant_key UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX payouts_by_tenant ON payouts (tenant_id, payout_id);
CREATE INDEX payouts_by_status ON payouts (status, payout_id);
-- Work the sweep picks up: approved and not yet sent, or a ledger write the status still calls for.
CREATE INDEX payouts_to_dispatch ON payouts (processing_until) WHERE status = 'approved';
CREATE INDEX payouts_ledger_due ON payouts (processing_until) WHERE
    (status IN ('rejected', 'cancelled', 'failed') AND release_transaction_id IS NULL)
    OR (status IN ('completed', 'returned') AND settle_transaction_id IS NULL)
    OR (status = 'returned' AND return_transaction_id IS NULL);
CREATE INDEX payouts_in_flight ON payouts (polled_at NULLS FIRST) WHERE status = 'processing';

-- The append-only audit trail: every transition and every decision, with who made it (`source`:
-- partner, operator:<id>, provider, sweep).
CREATE TABLE payout_transitions (
    id          bigserial PRIMARY KEY,
    payout_id   text NOT NULL REFERENCES payouts (payout_id),
    from_status text NOT NULL,
    to_status   text NOT NULL,
    source      text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payout_transitions_payout ON payout_transitions (payout_id, id);
CREATE RULE payout_transitions_no_update AS ON UPDATE TO payout_transitions DO INSTEAD NOTHING;
CREATE RULE payout_transitions_no_delete AS ON DELETE TO payout_transitions DO INSTEAD NOTHING;

-- Approvals: one per operator and payout (the second approver must be another operator).
CREATE TABLE payout_approvals (
    payout_id   text NOT NULL REFERENCES payouts (payout_id),
    operator_id text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payout_id, operator_id)
);

-- The ACH provider's webhooks, stored as received (dedupe on the provider's webhook id).
CREATE TABLE provider_events (
    webhook_id  text PRIMARY KEY,
    event       text NOT NULL,
    order_id    text NOT NULL,
    payout_id   text,
    body        jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz
);
CREATE INDEX provider_events_unapplied ON provider_events (received_at) WHERE applied_at IS NULL;
