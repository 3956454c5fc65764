CREATE TABLE tenants (
    tenant_id                 text PRIMARY KEY,
    name                      text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency_name             text NOT NULL CHECK (length(currency_name) BETWEEN 1 AND 64),
    environment               text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    status                    text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    webhook_url               text NOT NULL DEFAULT '' CHECK (length(webhook_url) <= 2048),
    -- Basis points. The source tenant's transfer share can exceed 3.5% only out of the network's 3%.
    network_fee_bps           integer NOT NULL DEFAULT 1000 CHECK (network_fee_bps BETWEEN 0 AND 10000),
    transfer_fee_bps          integer NOT NULL DEFAULT 350 CHECK (transfer_fee_bps BETWEEN 0 AND 650),
    allows_outgoing_transfers boolean NOT NULL DEFAULT true,
    allows_incoming_transfers boolean NOT NULL DEFAULT true,
    universal_transfers       boolean NOT NULL DEFAULT true,
    linked_game_ids           text[] NOT NULL DEFAULT '{}' CHECK (cardinality(linked_game_ids) <= 1000),
    -- USD cents; NULL: the environment default applies.
    hourly_cap_usd_cents      bigint CHECK (hourly_cap_usd_cents >= 0),
    daily_cap_usd_cents       bigint CHECK (daily_cap_usd_cents >= 0),
    monthly_cap_usd_cents     bigint CHECK (monthly_cap_usd_cents >= 0),
    rate_limit_per_second     integer NOT NULL DEFAULT 0 CHECK (rate_limit_per_second BETWEEN 0 AND 100000),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

-- SDK keys: only an HMAC of the key is stored.
CREATE TABLE sdk_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    key_hash    bytea NOT NULL,
    prefix      text NOT NULL,
    environment text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT sdk_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX sdk_keys_tenant ON sdk_keys (tenant_id, created_at);

-- Webhook signing secrets, sealed with AES-256-GCM; several live at once during a rotation.
CREATE TABLE webhook_secrets (
    secret_id   text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    data_key_id text NOT NULL,
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_secrets_tenant ON webhook_secrets (tenant_id, created_at);

-- Every administrative change, for support and finance.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    action     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    request_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
