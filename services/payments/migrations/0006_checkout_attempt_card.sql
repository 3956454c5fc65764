-- The card of a session's current attempt, recorded when the attempt is taken: a second call that
-- finds the attempt's order not stored yet can then tell "the same click again" (answered from the
-- attempt) from "another card while a payment is in flight" (409 PAYMENT_IN_PROGRESS).
ALTER TABLE checkout_sessions ADD COLUMN attempt_payment_method text;
