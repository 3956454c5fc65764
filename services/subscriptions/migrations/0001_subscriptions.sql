-- Currency subscriptions (issue 19). A subscription's periods are counted from its anchor (the
-- start of its first paid period); `periods_paid` of them are paid, each by one ledger item
-- purchase keyed by (subscription, period), recorded in subscription_charges (one row per period:
-- the primary key is the proof that no period is charged twice).
CREATE TABLE subscriptions (
    subscription_id       text PRIMARY KEY,
    tenant_id             text NOT NULL,
    environment           text NOT NULL,
    player_email          text NOT NULL,
    plan_id               text NOT NULL,
    plan_name             text NOT NULL,
    price_minor           bigint NOT NULL CHECK (price_minor > 0),
    interval              text NOT NULL CHECK (interval IN ('day', 'week', 'month')),
    interval_count        integer NOT NULL CHECK (interval_count BETWEEN 1 AND 12),
    trial_days            integer NOT NULL DEFAULT 0 CHECK (trial_days BETWEEN 0 AND 730),
    metadata              jsonb NOT NULL DEFAULT '{}',
    idempotency_key       text NOT NULL,
    request_hash          bytea NOT NULL,
    -- creating: the first period's charge is being made (internal, never shown; refused: deleted)
    status                text NOT NULL CHECK (status IN ('creating', 'trialing', 'active', 'past_due', 'cancelled')),
    anchor                timestamptz NOT NULL,  -- when period 1 starts (after the trial, if any)
    periods_paid          integer NOT NULL DEFAULT 0 CHECK (periods_paid >= 0),
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL,
    trial_end             timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    cancellation_reason   text CHECK (cancellation_reason IN ('requested', 'payment_failed')),
    cancelled_at          timestamptz,
    failed_attempts       integer NOT NULL DEFAULT 0,
    next_attempt_at       timestamptz,  -- when the scheduler looks at it next; NULL once cancelled
    last_failure          text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    processing_until      timestamptz,  -- the lease of whoever is charging or changing it
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX subscriptions_due ON subscriptions (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant_id, subscription_id DESC);
CREATE INDEX subscriptions_by_player ON subscriptions (tenant_id, player_email, subscription_id DESC);

CREATE TABLE subscription_charges (
    subscription_id       text NOT NULL REFERENCES subscriptions (subscription_id) ON DELETE CASCADE,
    period                integer NOT NULL CHECK (period >= 1),
    transaction_id        text NOT NULL UNIQUE,
    total_minor           bigint NOT NULL,
    partner_amount_minor  bigint NOT NULL,
    network_fee_minor     bigint NOT NULL,
    new_balance_minor     bigint NOT NULL,
    period_start          timestamptz NOT NULL,
    period_end            timestamptz NOT NULL,
    charged_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, period)
);

-- The development and test clock (INVO_SUBSCRIPTIONS_TEST_CLOCK): one row, shared by every
-- replica; ignored unless the setting is on, refused in production.
CREATE TABLE test_clock (
    id   integer PRIMARY KEY CHECK (id = 1),
    now  timestamptz NOT NULL
);
