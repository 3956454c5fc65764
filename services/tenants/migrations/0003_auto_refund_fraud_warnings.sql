-- Issue 13: a tenant may ask that an actionable early fraud warning be refunded at once, before it
-- can become a dispute. Off unless the tenant's operator turns it on; existing tenants stay off.
ALTER TABLE tenants ADD COLUMN auto_refund_fraud_warnings boolean NOT NULL DEFAULT false;
