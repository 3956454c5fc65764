-- GetRevenue's returned_minor sums a tenant's payout returns (ACH returns credited back to its
-- revenue) from their own transactions. Returns are rare: this index holds only them, so the
-- read is a few index rows and the purchases' inserts skip it.
CREATE INDEX transactions_payout_returns ON transactions (tenant_id) WHERE kind = 'payout_return';
