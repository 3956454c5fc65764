-- Entries are tagged with their account's tenant (the transaction's for the network's own
-- accounts), so a movement between two tenants shows in both tenants' entries.
UPDATE entries e SET tenant_id = a.tenant_id
FROM accounts a
WHERE a.id = e.account_id AND a.tenant_id IS NOT NULL AND e.tenant_id <> a.tenant_id;
