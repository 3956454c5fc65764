-- The operator action log (issue 17): every action an operator takes through the admin API (every
-- request that is not a read), recorded by the gateway before it runs, with its answer after. The
-- request's body is not kept (it may hold a bank account number): the route, its path parameters,
-- the tenant it names and its idempotency key say what was done, the status how it ended.
CREATE TABLE operator_actions (
    action_id       text PRIMARY KEY CHECK (action_id ~ '^act_[0-9A-Z]{26}$'),
    operator_id     text NOT NULL,
    method          text NOT NULL CHECK (method IN ('POST', 'PATCH', 'PUT', 'DELETE')),
    route           text NOT NULL CHECK (length(route) BETWEEN 1 AND 200),
    params          jsonb NOT NULL DEFAULT '{}',
    tenant_id       text NOT NULL DEFAULT '',
    idempotency_key text NOT NULL DEFAULT '',
    request_id      text NOT NULL DEFAULT '',
    status          integer,
    error_code      text NOT NULL DEFAULT '',
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT operator_actions_finished CHECK ((status IS NULL) = (finished_at IS NULL))
);
-- Newest first, by id (ULIDs are time-ordered): the whole log, one operator's, one tenant's.
CREATE INDEX operator_actions_operator ON operator_actions (operator_id, action_id);
CREATE INDEX operator_actions_tenant ON operator_actions (tenant_id, action_id);
