-- A cancel at once with proration (issue 19): the refund of the unused part of the last paid
-- period, decided (and stored) before the ledger is asked, so a retry after a crash asks for the
-- same amounts; the ledger's transaction once it is made.
ALTER TABLE subscriptions
    ADD COLUMN refund_period          integer,
    ADD COLUMN refund_partner_minor   bigint CHECK (refund_partner_minor >= 0),
    ADD COLUMN refund_fee_minor       bigint CHECK (refund_fee_minor >= 0),
    ADD COLUMN refund_transaction_id  text,
    ADD COLUMN refund_decided_at      timestamptz;
