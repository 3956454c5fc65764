-- Double-entry ledger, TigerBeetle-style: an account keeps four totals; its balance is
-- credits_posted - debits_posted; available = balance - debits_pending. Every change to the
-- totals is an entry (for posted movements) in the same database transaction.
CREATE TABLE accounts (
    id              bigserial PRIMARY KEY,
    code            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('world', 'player', 'revenue', 'network', 'held', 'payouts')),
    tenant_id       text,
    player_email    text,
    -- A constrained account never goes below zero; a player wallet only by a clawback (a debt).
    constrained     boolean NOT NULL,
    debits_posted   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_code_key UNIQUE (code),
    -- The last line of defence: only a player wallet may ever hold a debt.
    CONSTRAINT accounts_constrained_not_negative CHECK (
        NOT constrained OR kind = 'player' OR credits_posted - debits_posted - debits_pending >= 0
    )
);
CREATE INDEX accounts_tenant_players ON accounts (tenant_id, player_email) WHERE kind = 'player';

-- Transactions are immutable but for a hold's status (pending -> posted | voided, exactly once).
CREATE TABLE transactions (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('posted', 'pending', 'voided')),
    postings    jsonb NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    resolved_at timestamptz
);
CREATE INDEX transactions_pending_expiry ON transactions (expires_at) WHERE status = 'pending';
CREATE INDEX transactions_tenant ON transactions (tenant_id, created_at);

-- One row per account per posted transaction. Ids are allocated under the ledger's write lock,
-- so they commit in order and a cursor over them never skips a late commit.
CREATE TABLE entries (
    id            bigserial PRIMARY KEY,
    txn_id        text NOT NULL REFERENCES transactions (id),
    tenant_id     text NOT NULL,
    account_id    bigint NOT NULL REFERENCES accounts (id),
    amount        bigint NOT NULL CHECK (amount <> 0),
    balance_after bigint NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX entries_tenant ON entries (tenant_id, id);
CREATE INDEX entries_account ON entries (account_id, id);
CREATE INDEX entries_txn ON entries (txn_id);

-- Idempotency keys, stored with a hash of the request and the first result.
CREATE TABLE idempotency (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    txn_id       text,
    result       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
