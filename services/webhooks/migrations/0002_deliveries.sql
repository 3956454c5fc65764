-- Every event consumed from the stream, once (dedupe on the event id).
CREATE TABLE events (
    event_id    text PRIMARY KEY,
    tenant_id   text NOT NULL,
    event_type  text NOT NULL,
    body        text NOT NULL,  -- the exact bytes delivered and signed
    received_at timestamptz NOT NULL DEFAULT now()
);

-- One delivery per event per endpoint.
CREATE TABLE deliveries (
    delivery_id     text PRIMARY KEY,
    event_id        text NOT NULL REFERENCES events (event_id),
    tenant_id       text NOT NULL,
    event_type      text NOT NULL,
    url             text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,   -- every attempt ever made
    cycle_attempts  integer NOT NULL DEFAULT 0,   -- attempts since the last (re)delivery began
    next_attempt_at timestamptz,
    lease_until     timestamptz,                  -- a sender owns it until then
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CONSTRAINT deliveries_event_url_key UNIQUE (event_id, url)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_tenant ON deliveries (tenant_id, delivery_id);
CREATE INDEX deliveries_failed ON deliveries (tenant_id, updated_at) WHERE status = 'failed';

CREATE TABLE delivery_attempts (
    id            bigserial PRIMARY KEY,
    delivery_id   text NOT NULL REFERENCES deliveries (delivery_id),
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    status_code   integer,
    latency_ms    integer NOT NULL,
    response_body text NOT NULL DEFAULT '',
    error         text NOT NULL DEFAULT ''
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
