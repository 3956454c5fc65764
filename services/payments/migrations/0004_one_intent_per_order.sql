-- From here on an order's PaymentIntent is created unconfirmed and its id stored before it is
-- confirmed (orders_payment_intent, from 0002, keeps one order per intent). An order still in
-- flight from before has no stored id, yet may have a confirmed intent made under its idempotency
-- key, which the new create call cannot reuse (other parameters) nor safely replace: it is held
-- for an operator, who finds its intent at the processor by metadata.order_id.
UPDATE orders
SET review_reason = 'in flight when PaymentIntents began to be stored before confirming: find its PaymentIntent'
    ' at the processor (metadata.order_id) before settling it',
    processing_until = NULL,
    updated_at = now()
WHERE status = 'pending_payment' AND payment_intent_id IS NULL AND review_reason IS NULL AND voided_at IS NULL;
