-- An order has at most one PaymentIntent, and a PaymentIntent belongs to one order: the intent is
-- created unconfirmed and its id stored here before it is confirmed, and nothing ever replaces it.
CREATE UNIQUE INDEX orders_payment_intent_key ON orders (payment_intent_id) WHERE payment_intent_id IS NOT NULL;
