-- After the sale: refunds, disputes and early fraud warnings (issue 13).

-- What has gone back of each order. The currency debits of an order's refunds are computed from the
-- running USD total (currency * refunded // usd, difference with the total before), so the debits
-- of an order refunded in parts add up exactly to its currency_amount.
ALTER TABLE orders
    ADD COLUMN charge_id         text,
    ADD COLUMN usd_refunded      bigint NOT NULL DEFAULT 0,
    ADD COLUMN currency_refunded bigint NOT NULL DEFAULT 0,
    ADD COLUMN currency_clawed   bigint NOT NULL DEFAULT 0,
    ADD COLUMN debt_repaid       bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_refunded_range CHECK (usd_refunded BETWEEN 0 AND usd_cents),
    ADD CONSTRAINT orders_debited_range CHECK (
        currency_refunded >= 0 AND currency_clawed >= 0 AND currency_refunded + currency_clawed <= currency_amount),
    ADD CONSTRAINT orders_debt_repaid_range CHECK (debt_repaid BETWEEN 0 AND currency_amount);

-- A refund is stored (pending, its amount reserved) before the processor is asked, under the
-- caller's idempotency key, which is also the processor's: one processor refund per key. Once the
-- processor has refunded, the row is `applying` (its currency debit fixed here) until the ledger's
-- debit and the event are written, then `succeeded`. A crash anywhere leaves a row the recovery
-- loop finishes.
CREATE TABLE refunds (
    refund_id           text PRIMARY KEY,
    order_id            text NOT NULL REFERENCES orders (order_id),
    tenant_id           text NOT NULL,
    idempotency_key     text NOT NULL,
    request_hash        bytea NOT NULL,
    usd_cents           bigint NOT NULL CHECK (usd_cents > 0),
    reason              text NOT NULL,
    source              text NOT NULL CHECK (source IN ('admin', 'processor', 'fraud_warning')),
    operator_id         text,
    status              text NOT NULL CHECK (status IN ('pending', 'applying', 'succeeded', 'failed')),
    processor_refund_id text UNIQUE,
    currency_minor      bigint CHECK (currency_minor >= 0),
    transaction_id      text,
    new_balance         bigint,
    failure_code        text,
    failure_message     text,
    processing_until    timestamptz,
    -- A refund applied while a dispute of the order is open (an inquiry the processor let be
    -- refunded): the dispute's freeze it voids in its ledger write, and the dispute to freeze again
    -- what is still disputed afterwards.
    release_hold_id     text,
    dispute_id          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    applied_at          timestamptz,
    CONSTRAINT refunds_order_key UNIQUE (order_id, idempotency_key)
);
CREATE INDEX refunds_unfinished ON refunds (updated_at) WHERE status IN ('pending', 'applying');

-- A dispute moves opening -> open -> closing -> closed; its amounts are fixed in the step before the
-- ledger is asked, so a retry asks the ledger for the same write (which replays).
CREATE TABLE disputes (
    dispute_id     text PRIMARY KEY,
    order_id       text NOT NULL REFERENCES orders (order_id),
    tenant_id      text NOT NULL,
    charge_id      text,
    reason         text NOT NULL,
    usd_cents      bigint NOT NULL CHECK (usd_cents >= 0),
    inquiry        boolean NOT NULL,
    status         text NOT NULL,
    phase          text NOT NULL CHECK (phase IN ('opening', 'open', 'closing', 'closed')),
    outcome        text CHECK (outcome IN ('won', 'lost', 'warning_closed')),
    freeze_minor   bigint NOT NULL CHECK (freeze_minor >= 0),
    frozen_minor   bigint NOT NULL DEFAULT 0 CHECK (frozen_minor >= 0),
    hold_id        text,
    claw_minor     bigint CHECK (claw_minor >= 0),
    transaction_id text,
    new_balance    bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz
);
CREATE INDEX disputes_order ON disputes (order_id);

CREATE TABLE fraud_warnings (
    warning_id     text PRIMARY KEY,
    order_id       text NOT NULL REFERENCES orders (order_id),
    tenant_id      text NOT NULL,
    charge_id      text,
    fraud_type     text NOT NULL,
    actionable     boolean NOT NULL,
    recommendation text NOT NULL CHECK (recommendation IN ('consider_refund', 'monitor')),
    refund_id      text REFERENCES refunds (refund_id),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_warnings_order ON fraud_warnings (order_id);

-- An event that arrived before the one it follows (a refund before the payment's success, a
-- dispute's closing before its opening) waits, unhandled, on what it needs ("paid:<pi>",
-- "opened:<dispute>"); it is applied when that happens, never dropped.
ALTER TABLE processor_inbox ADD COLUMN waiting_on text;
CREATE INDEX processor_inbox_waiting ON processor_inbox (waiting_on) WHERE handled_at IS NULL AND waiting_on IS NOT NULL;
