-- Transfers between tenants (issue 14): self-transfers and sends by phone, their PINs and claim
-- codes (stored only as keyed HMACs), the texts they send, and failed claims (for the rate limit).
CREATE TABLE transfers (
    transfer_id            text PRIMARY KEY,
    kind                   text NOT NULL CHECK (kind IN ('self_transfer', 'send')),
    source_tenant_id       text NOT NULL,
    environment            text NOT NULL,
    idempotency_key        text NOT NULL,
    request_hash           bytea NOT NULL,
    sender_email           text NOT NULL,
    sender_phone           text NOT NULL,
    recipient_phone        text,  -- a send's
    destination_tenant_id  text,  -- a self-transfer's from the start, a send's once claimed
    recipient_email        text,  -- once claimed
    amount_minor           bigint NOT NULL CHECK (amount_minor > 0 AND amount_minor % 10 = 0),
    fee_minor              bigint NOT NULL,
    source_fee_minor       bigint NOT NULL CHECK (source_fee_minor >= 0),
    destination_fee_minor  bigint NOT NULL CHECK (destination_fee_minor >= 0),
    network_fee_minor      bigint NOT NULL CHECK (network_fee_minor >= 0),
    status                 text NOT NULL CHECK (status IN (
                               'creating', 'pending_verification', 'claimable', 'claiming', 'completed',
                               'returning', 'cancelled', 'expired')),
    return_status          text CHECK (return_status IN ('cancelled', 'expired')),
    end_reason             text,
    pin_hash               bytea,
    pin_expires_at         timestamptz,
    pin_attempts           integer NOT NULL DEFAULT 0,
    pin_sends              integer NOT NULL DEFAULT 0,
    pin_sent_at            timestamptz,
    verify_by              timestamptz NOT NULL,
    claim_hash             bytea,
    claim_expires_at       timestamptz,
    hold_transaction_id    text,
    release_transaction_id text,
    sender_balance_minor   bigint,  -- the sender's wallet after the hold, then after a return
    recipient_balance_minor bigint, -- the recipient's wallet after the settlement
    metadata               jsonb NOT NULL DEFAULT '{}',
    processing_until       timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    verified_at            timestamptz,
    completed_at           timestamptz,
    ended_at               timestamptz,
    CONSTRAINT transfers_fee_is_ten_percent CHECK (fee_minor * 10 = amount_minor),
    CONSTRAINT transfers_shares_add_up CHECK (source_fee_minor + destination_fee_minor + network_fee_minor = fee_minor),
    CONSTRAINT transfers_tenant_key UNIQUE (source_tenant_id, idempotency_key)
);
CREATE UNIQUE INDEX transfers_claim_hash ON transfers (claim_hash) WHERE claim_hash IS NOT NULL;
CREATE INDEX transfers_by_source ON transfers (source_tenant_id, transfer_id);
CREATE INDEX transfers_by_destination ON transfers (destination_tenant_id, transfer_id)
    WHERE destination_tenant_id IS NOT NULL;
CREATE INDEX transfers_verify_due ON transfers (verify_by) WHERE status = 'pending_verification';
CREATE INDEX transfers_claim_due ON transfers (claim_expires_at) WHERE status = 'claimable';
CREATE INDEX transfers_unfinished ON transfers (processing_until) WHERE status IN ('creating', 'claiming', 'returning');

-- The append-only audit trail of every transition.
CREATE TABLE transfer_transitions (
    id          bigserial PRIMARY KEY,
    transfer_id text NOT NULL REFERENCES transfers (transfer_id),
    from_status text NOT NULL,
    to_status   text NOT NULL,
    source      text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfer_transitions_transfer ON transfer_transitions (transfer_id, id);
CREATE RULE transfer_transitions_no_update AS ON UPDATE TO transfer_transitions DO INSTEAD NOTHING;
CREATE RULE transfer_transitions_no_delete AS ON DELETE TO transfer_transitions DO INSTEAD NOTHING;

-- Texts: reserved when a transfer is accepted (so the per-phone and per-tenant limits count them
-- from then), queued with their body sealed (AES-GCM) once the code exists, and the body erased
-- as soon as the provider took it.
CREATE TABLE sms_messages (
    message_id       text PRIMARY KEY,
    transfer_id      text NOT NULL REFERENCES transfers (transfer_id) ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    purpose          text NOT NULL CHECK (purpose IN ('pin', 'claim')),
    phone            text NOT NULL,
    status           text NOT NULL CHECK (status IN ('reserved', 'queued', 'sent', 'failed', 'superseded')),
    body_kid         text,
    body_sealed      bytea,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    send_by          timestamptz,  -- after this the text is useless (its code expired): failed
    processing_until timestamptz,
    provider_id      text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CONSTRAINT sms_body_only_while_queued CHECK (status = 'queued' OR body_sealed IS NULL)
);
CREATE INDEX sms_messages_phone_recent ON sms_messages (phone, created_at);
CREATE INDEX sms_messages_tenant_recent ON sms_messages (tenant_id, created_at);
CREATE INDEX sms_messages_queued ON sms_messages (next_attempt_at) WHERE status = 'queued';

-- Development only (INVO_SMS_PROVIDER=outbox): the texts a phone would have received.
CREATE TABLE sms_dev_outbox (
    id          bigserial PRIMARY KEY,
    provider_id text NOT NULL UNIQUE,
    to_phone    text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_dev_outbox_phone ON sms_dev_outbox (to_phone, id);

-- Claims with a code nobody holds, per tenant, for the failed-claims limit (pruned after a minute).
CREATE TABLE claim_failures (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX claim_failures_tenant_recent ON claim_failures (tenant_id, created_at);
