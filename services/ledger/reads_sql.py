"""What a batch reads before it applies its ops, in SQL: its accounts (created if new) and the
stored results of its idempotency keys, in one round trip where it can."""

from __future__ import annotations

from typing import Any

from services.ledger import chart

# The accounts of a batch, created if new: new ones come back from the INSERT, existing ones from
# the table (the SELECT cannot see the CTE's rows: same snapshot, so nothing is read twice). Rows
# carry NULL idempotency columns, so they can share a result with the idempotency lookup.
ACCOUNTS_CTE = (
    "new AS ("
    "  INSERT INTO accounts (code, kind, tenant_id, player_email, constrained)"
    "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[])"
    "  ON CONFLICT (code) DO NOTHING"
    "  RETURNING id, code, debits_posted, credits_posted, debits_pending, credits_pending),"
    " accounts_read AS ("
    "  SELECT id, code, debits_posted, credits_posted, debits_pending, credits_pending,"
    "         NULL::text AS scope, NULL::text AS key, NULL::bytea AS request_hash, NULL::jsonb AS result FROM new"
    "  UNION ALL"
    "  SELECT id, code, debits_posted, credits_posted, debits_pending, credits_pending, NULL, NULL, NULL, NULL"
    "  FROM accounts WHERE code = ANY($1::text[]))"
)
ACCOUNTS_SQL = f"WITH {ACCOUNTS_CTE} SELECT * FROM accounts_read"
# Stored results of the batch's idempotency keys ($n: scopes, $m: keys), shaped like accounts_read.
IDEMPOTENCY_SELECT = (
    "SELECT NULL::bigint AS id, NULL::text AS code, NULL::bigint AS debits_posted, NULL::bigint AS credits_posted,"
    " NULL::bigint AS debits_pending, NULL::bigint AS credits_pending, i.scope, i.key, i.request_hash, i.result"
    " FROM idempotency i"
    " JOIN unnest(${0}::text[], ${1}::text[]) AS k(scope, key) ON i.scope = k.scope AND i.key = k.key"
)
IDEMPOTENCY_SQL = IDEMPOTENCY_SELECT.format(1, 2)


def account_args(codes: list[str], infos: dict[str, chart.AccountInfo]) -> list[list[Any]]:
    """The parameters $1..$5 of `ACCOUNTS_CTE`."""
    return [
        codes,
        [infos[c].kind for c in codes],
        [infos[c].tenant_id for c in codes],
        [infos[c].player_email for c in codes],
        [infos[c].constrained for c in codes],
    ]
