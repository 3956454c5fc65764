-- The transactional outbox: an event is written in the same transaction as the state change it
-- announces; the relay publishes it to JetStream (Nats-Msg-Id = event_id) and then marks it.
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    tenant_id    text NOT NULL,
    event_type   text NOT NULL,
    body         text NOT NULL,  -- the exact JSON envelope published, never re-serialised
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
