"""The payout store: rows, their lifecycle (the seed's requested -> approved -> processing ->
completed, and rejected, cancelled, failed, returned) with its append-only audit trail, and the
lease a worker holds while it talks to the ledger or the ACH provider about one.

    creating ─▶ requested ─▶ approved ─▶ processing ─▶ completed ─▶ returned
                    │            │            │
                    ├─▶ rejected └────────────┴─▶ failed
                    └─▶ cancelled

`creating` is internal (the ledger's hold is being placed; a refused hold deletes the row) and
never shown. A status is the truth as soon as it is written; the ledger write it calls for (post
the hold on completed, void it on rejected / cancelled / failed, credit it back on returned) is
derived from the status and the transaction ids already recorded, so it is done once, by whoever
gets to it first: the request that moved the row, or the sweep after a crash.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from services.common import errors
from services.common.leases import Lease
from services.common.transitions import Lifecycle

PAYOUT_ID_RE = re.compile(r"^po_[0-9A-Z]{26}$")
TRANSITIONS: dict[str, frozenset[str]] = {
    "creating": frozenset({"requested"}),
    "requested": frozenset({"approved", "rejected", "cancelled"}),
    "approved": frozenset({"processing", "failed"}),
    "processing": frozenset({"completed", "failed"}),
    "completed": frozenset({"returned"}),
    "returned": frozenset(),
    "rejected": frozenset(),
    "cancelled": frozenset(),
    "failed": frozenset(),
}
PUBLIC_STATUSES = tuple(s for s in TRANSITIONS if s != "creating")
RELEASED = ("rejected", "cancelled", "failed")  # the hold is voided
SETTLED = ("completed", "returned")  # the hold is posted
COLUMNS = (
    "payout_id, tenant_id, environment, idempotency_key, request_hash, requested_by, usd_cents, amount_minor,"
    " contact_email, account_holder_name, routing_number, account_type, account_kid, account_sealed, account_last4,"
    " approvals_required, status, reason, provider_order_id, provider_status, return_code, return_reason,"
    " hold_transaction_id, settle_transaction_id, release_transaction_id, return_transaction_id, processing_until,"
    " dispatch_started_at, polled_at, created_at, updated_at, approved_at, completed_at, ended_at"
)
LIFECYCLE = Lifecycle(
    table="payouts", key_column="payout_id", audit_table="payout_transitions", allowed=TRANSITIONS, columns=COLUMNS
)
LEDGER_DUE = (
    "(status IN ('rejected', 'cancelled', 'failed') AND release_transaction_id IS NULL)"
    " OR (status IN ('completed', 'returned') AND settle_transaction_id IS NULL)"
    " OR (status = 'returned' AND return_transaction_id IS NULL)"
)
LIST_LIMIT_MAX = 100
POLL_AFTER_S = 30  # a payout in flight is asked of the provider this often, webhooks or not


def not_found() -> errors.NotFound:
    return errors.NotFound("No such payout.", error_code="PAYOUT_NOT_FOUND")


class PayoutStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self.pool = pool
        self.lease = Lease(table="payouts", key_column="payout_id", duration_s=lease_s, columns=COLUMNS)

    async def find(self, payout_id: str, conn: Any = None) -> asyncpg.Record | None:
        if not PAYOUT_ID_RE.match(payout_id):
            return None
        db: Any = conn or self.pool
        return await db.fetchrow(
            f"SELECT {COLUMNS} FROM payouts WHERE payout_id = $1 AND status <> 'creating'", payout_id
        )

    async def visible(self, payout_id: str, tenant_id: str, *, any_tenant: bool = False) -> asyncpg.Record:
        row = await self.find(payout_id)
        if row is None or (not any_tenant and row["tenant_id"] != tenant_id):
            raise not_found()
        return row

    async def locked(self, conn: asyncpg.Connection, payout_id: str) -> asyncpg.Record | None:
        if not PAYOUT_ID_RE.match(payout_id):
            return None
        return await conn.fetchrow(
            f"SELECT {COLUMNS} FROM payouts WHERE payout_id = $1 AND status <> 'creating' FOR UPDATE", payout_id
        )

    async def by_key(self, conn: Any, tenant_id: str, key: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {COLUMNS} FROM payouts WHERE tenant_id = $1 AND idempotency_key = $2", tenant_id, key
        )

    async def by_order(self, conn: Any, order_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {COLUMNS} FROM payouts WHERE provider_order_id = $1", order_id)

    async def history(self, payout_id: str) -> list[asyncpg.Record]:
        return await LIFECYCLE.history(self.pool, payout_id)

    async def approvals(self, payout_id: str, conn: Any = None) -> list[asyncpg.Record]:
        db: Any = conn or self.pool
        return list(
            await db.fetch(
                "SELECT operator_id, created_at FROM payout_approvals WHERE payout_id = $1 ORDER BY created_at",
                payout_id,
            )
        )

    async def approvals_of(self, payout_ids: list[str]) -> dict[str, list[asyncpg.Record]]:
        """The approvals of a page of payouts, in one query."""
        out: dict[str, list[asyncpg.Record]] = {pid: [] for pid in payout_ids}
        for r in await self.pool.fetch(
            "SELECT payout_id, operator_id, created_at FROM payout_approvals WHERE payout_id = ANY($1::text[])"
            " ORDER BY created_at",
            payout_ids,
        ):
            out[r["payout_id"]].append(r)
        return out

    async def page(
        self, *, tenant_id: str, any_tenant: bool, status: str, starting_after: str, limit: int
    ) -> tuple[list[asyncpg.Record], bool]:
        """Newest first (ids are ULIDs); one more read than asked, to say whether there are more."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {LIST_LIMIT_MAX}")
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM payouts WHERE status <> 'creating' AND ($1 OR tenant_id = $2)"
            " AND ($3 = '' OR status = $3) AND ($4 = '' OR payout_id < $4) ORDER BY payout_id DESC LIMIT $5",
            any_tenant,
            tenant_id,
            status,
            starting_after,
            limit + 1,
        )
        return list(rows[:limit]), len(rows) > limit

    async def forget_refused(self, payout_id: str) -> None:
        """A hold the ledger refused: the payout never existed, its key is free again."""
        await self.pool.execute("DELETE FROM payouts WHERE payout_id = $1 AND status = 'creating'", payout_id)

    # -- work for the sweep -------------------------------------------------------------------

    async def claim_creating(self, limit: int) -> list[asyncpg.Record]:
        return await self.lease.claim_batch(self.pool, where="status = 'creating'", order_by="created_at", limit=limit)

    async def claim_dispatch(self, limit: int) -> list[asyncpg.Record]:
        return await self.lease.claim_batch(
            self.pool, where="status = 'approved'", order_by="processing_until NULLS FIRST", limit=limit
        )

    async def claim_ledger_due(self, limit: int) -> list[asyncpg.Record]:
        return await self.lease.claim_batch(
            self.pool, where=LEDGER_DUE, order_by="processing_until NULLS FIRST", limit=limit
        )

    async def claim_poll(self, limit: int) -> list[asyncpg.Record]:
        """Payouts in flight not asked of the provider for POLL_AFTER_S: a webhook may be lost."""
        return await self.lease.claim_batch(
            self.pool,
            where=f"status = 'processing' AND (polled_at IS NULL OR polled_at < now() - interval '{POLL_AFTER_S} s')",
            order_by="polled_at NULLS FIRST",
            limit=limit,
        )
