-- Hosted checkout. A session is minted with an SDK key and paid on the hosted page; each payment
-- attempt is an order of its own (a declined card, then another one), whose purchase_reference is
-- the session's `checkout:<session_id>:<attempt>`. The session is completed when the order of its
-- current attempt is paid, which is read from that order, never copied.
CREATE TABLE checkout_sessions (
    session_id         text PRIMARY KEY,
    tenant_id          text NOT NULL,
    environment        text NOT NULL,
    player_email       text NOT NULL,
    usd_cents          bigint NOT NULL CHECK (usd_cents > 0),
    success_url        text NOT NULL,
    cancel_url         text NOT NULL,
    metadata           jsonb NOT NULL DEFAULT '{}',
    metadata_hash      text NOT NULL,
    kid                text NOT NULL,
    cancelled          boolean NOT NULL DEFAULT false,
    attempts           integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    purchase_reference text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    cancelled_at       timestamptz
);
CREATE INDEX checkout_sessions_tenant ON checkout_sessions (tenant_id, created_at);

-- One processor Customer per tenant and player: it holds the player's saved cards.
CREATE TABLE processor_customers (
    tenant_id    text NOT NULL,
    player_email text NOT NULL,
    customer_id  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, player_email)
);

-- A checkout order's PaymentIntent is the Customer's, and may save its card: both are the order's
-- own, so that whoever creates the intent (the first attempt or the recovery loop) sends the same.
ALTER TABLE orders ADD COLUMN processor_customer_id text, ADD COLUMN save_card boolean NOT NULL DEFAULT false;
