-- A renewal's charge sent to the ledger and not yet answered (a timeout, a crash): the period and
-- the exact request's fee and currency name, so that whoever acts on the subscription next (the
-- loop, a cancel, a resume) first sends the same charge again under the same key and records its
-- definite answer (the ledger replays one that landed late, or applies it now, once) before doing
-- anything else: a cancel never overtakes a charge already on its way.
ALTER TABLE subscriptions
    ADD COLUMN pending_period         integer,
    ADD COLUMN pending_fee_bps        integer,
    ADD COLUMN pending_currency_name  text;
