-- Named operators of the admin API (issue 10, item 6). The credential is stored only as an HMAC
-- with the key pepper, like an SDK key; the row records who created it and who revoked it, so an
-- operator's own life is audited where it is kept.
CREATE TABLE operators (
    operator_id       text PRIMARY KEY CHECK (operator_id ~ '^op_[0-9A-Z]{26}$'),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email             text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role              text NOT NULL CHECK (role IN ('viewer', 'support', 'finance', 'admin')),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    credential_hash   bytea NOT NULL,
    credential_prefix text NOT NULL,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_by        text,
    revoked_at        timestamptz,
    CONSTRAINT operators_credential_hash_key UNIQUE (credential_hash),
    CONSTRAINT operators_revoked_consistent CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
-- One live identity per person: a second active operator with the same email is refused.
CREATE UNIQUE INDEX operators_active_email ON operators (email) WHERE status = 'active';

-- Every administrative change records the operator who made it ('' for rows written before this
-- migration, when only the bootstrap token existed, and for changes no operator asked for).
ALTER TABLE audit_log ADD COLUMN operator_id text NOT NULL DEFAULT '';
