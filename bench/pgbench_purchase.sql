-- The pgbench-peer scenario (bench/pgbench_peer.py): the writes of one item purchase as the ledger
-- would make them without batching, one transaction each, from pgbench's C client: the idempotency
-- row, the player debited (only if it has the funds), one of 16 tenants' revenue rows and that
-- tenant's fee row credited (no single hot row), the transaction, its three entries, its outbox row.
\set p random(1, :players)
\set t random(1, 16)
BEGIN;
SELECT nextval('peer_seq') AS n \gset
INSERT INTO idempotency (scope, key, request_hash, txn_id, result) VALUES ('peer', 'k' || :n, '\x00', 'txn_peer' || :n, '{}');
UPDATE accounts SET debits_posted = debits_posted + 2 WHERE id = :player_base + :p AND credits_posted - debits_posted >= 2;
UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = :revenue_base + :t;
UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = :fee_base + :t;
INSERT INTO transactions (id, tenant_id, kind, status, postings, created_at) VALUES ('txn_peer' || :n, 'tn_peer' || :t, 'item_purchase', 'posted', '[]', now());
INSERT INTO entries (txn_id, tenant_id, account_id, amount, balance_after, created_at) VALUES ('txn_peer' || :n, 'tn_peer' || :t, :player_base + :p, -2, 0, now()), ('txn_peer' || :n, 'tn_peer' || :t, :revenue_base + :t, 1, 0, now()), ('txn_peer' || :n, 'tn_peer' || :t, :fee_base + :t, 1, 0, now());
INSERT INTO outbox (event_id, tenant_id, event_type, body) VALUES ('evt_peer' || :n, 'tn_peer' || :t, 'item.purchased', '{}');
END;
