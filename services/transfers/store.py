"""The transfer store: the SQL of transfers, their lifecycle with its append-only audit trail, and
the lease a worker holds while it talks to the ledger about one.

    creating ──▶ pending_verification ──▶ claimable ──▶ claiming ──▶ completed
                          │                   │
                          └───────────────────┴──▶ returning ──▶ cancelled | expired

`creating` is internal (the hold is being placed; a refused hold deletes the row, so the partner's
key is free again) and never shown. `claiming` and `returning` last while the ledger settles or
returns the money: a worker holds the row's lease meanwhile, and a crash leaves them for the sweep
(or the claimant's retry) to finish. Every other move goes through `LIFECYCLE.move`, which writes
the audit row in the same transaction.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import asyncpg

from services.common import errors
from services.common.leases import Lease
from services.common.transitions import Lifecycle

TRANSFER_ID_RE = re.compile(r"^trf_[0-9A-Z]{26}$")
SELF, SEND = "self_transfer", "send"
KINDS = (SELF, SEND)
OPEN = ("pending_verification", "claimable")  # what a cancel or an expiry can still end
ENDED = ("completed", "cancelled", "expired")
PUBLIC_STATUSES = ("pending_verification", "claimable", "claiming", "completed", "returning", "cancelled", "expired")
TRANSITIONS: dict[str, frozenset[str]] = {
    "creating": frozenset({"pending_verification"}),
    "pending_verification": frozenset({"claimable", "returning"}),
    "claimable": frozenset({"claiming", "returning"}),
    "claiming": frozenset({"completed"}),
    "returning": frozenset({"cancelled", "expired"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}
COLUMNS = (
    "transfer_id, kind, source_tenant_id, environment, idempotency_key, request_hash, sender_email, sender_phone,"
    " recipient_phone, destination_tenant_id, recipient_email, amount_minor, fee_minor, source_fee_minor,"
    " destination_fee_minor, network_fee_minor, status, return_status, end_reason, pin_hash, pin_expires_at,"
    " pin_attempts, pin_sends, pin_sent_at, verify_by, claim_hash, claim_expires_at, hold_transaction_id,"
    " release_transaction_id, sender_balance_minor, recipient_balance_minor, metadata, processing_until, created_at,"
    " updated_at, verified_at, completed_at, ended_at"
)
LIFECYCLE = Lifecycle(
    table="transfers",
    key_column="transfer_id",
    audit_table="transfer_transitions",
    allowed=TRANSITIONS,
    columns=COLUMNS,
)
LIST_LIMIT_MAX = 100


def not_found() -> errors.NotFound:
    return errors.NotFound("No such transfer.", error_code="TRANSFER_NOT_FOUND")


def role_of(row: asyncpg.Record, tenant_id: str) -> str | None:
    """The tenant's side of a transfer, or None if it is neither (and may not see it)."""
    if row["source_tenant_id"] == tenant_id:
        return "source"
    if row["destination_tenant_id"] == tenant_id:
        return "destination"  # a self-transfer's from the start, a send's once claimed there
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewTransfer:
    transfer_id: str
    kind: str
    source_tenant_id: str
    environment: str
    idempotency_key: str
    request_hash: bytes
    sender_email: str
    sender_phone: str
    recipient_phone: str | None
    destination_tenant_id: str | None
    amount_minor: int
    fee_minor: int
    source_fee_minor: int
    destination_fee_minor: int
    network_fee_minor: int
    metadata_json: str
    verify_window_s: float
    lease_s: float


class TransferStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self.pool = pool
        self.lease = Lease(table="transfers", key_column="transfer_id", duration_s=lease_s, columns=COLUMNS)

    # -- reads ----------------------------------------------------------------------------

    async def find(self, transfer_id: str, conn: Any = None) -> asyncpg.Record | None:
        if not TRANSFER_ID_RE.match(transfer_id):
            return None
        db: Any = conn or self.pool
        return await db.fetchrow(
            f"SELECT {COLUMNS} FROM transfers WHERE transfer_id = $1 AND status <> 'creating'", transfer_id
        )

    async def visible(self, transfer_id: str, tenant_id: str) -> tuple[asyncpg.Record, str]:
        """The transfer as `tenant_id` may see it, and its role; 404 for anyone else's."""
        row = await self.find(transfer_id)
        role = role_of(row, tenant_id) if row is not None else None
        if row is None or role is None:
            raise not_found()
        return row, role

    async def locked(self, conn: asyncpg.Connection, transfer_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {COLUMNS} FROM transfers WHERE transfer_id = $1 FOR UPDATE", transfer_id)

    async def by_key(self, conn: Any, tenant_id: str, key: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {COLUMNS} FROM transfers WHERE source_tenant_id = $1 AND idempotency_key = $2", tenant_id, key
        )

    async def by_claim_hash(self, conn: asyncpg.Connection, digest: bytes) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {COLUMNS} FROM transfers WHERE claim_hash = $1 FOR UPDATE", digest)

    async def history(self, transfer_id: str) -> list[asyncpg.Record]:
        return await LIFECYCLE.history(self.pool, transfer_id)

    async def list_for(
        self, tenant_id: str, *, status: str, role: str, starting_after: str, limit: int
    ) -> tuple[list[asyncpg.Record], bool]:
        """A tenant's transfers (as source, as destination, or both), newest first, one more than
        `limit` read to say whether there are more. Ids are time-ordered (ULIDs)."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {LIST_LIMIT_MAX}")
        parts = []
        if role in ("", "source"):
            parts.append("SELECT {cols} FROM transfers WHERE source_tenant_id = $1 AND {cond}")
        if role in ("", "destination"):
            parts.append(
                "SELECT {cols} FROM transfers WHERE destination_tenant_id = $1 AND source_tenant_id <> $1 AND {cond}"
            )
        cond = "status <> 'creating' AND ($2 = '' OR status = $2) AND ($3 = '' OR transfer_id < $3)"
        inner = " UNION ALL ".join(
            f"({p.format(cols=COLUMNS, cond=cond)} ORDER BY transfer_id DESC LIMIT $4)" for p in parts
        )
        rows = await self.pool.fetch(
            f"SELECT * FROM ({inner}) t ORDER BY transfer_id DESC LIMIT $4",
            tenant_id,
            status,
            starting_after,
            limit + 1,
        )
        return list(rows[:limit]), len(rows) > limit

    # -- writes ---------------------------------------------------------------------------

    async def insert(self, conn: asyncpg.Connection, t: NewTransfer) -> asyncpg.Record | None:
        """The new row in `creating`, leased to its creator; None when the key is taken."""
        return await conn.fetchrow(
            "INSERT INTO transfers (transfer_id, kind, source_tenant_id, environment, idempotency_key, request_hash,"
            " sender_email, sender_phone, recipient_phone, destination_tenant_id, amount_minor, fee_minor,"
            " source_fee_minor, destination_fee_minor, network_fee_minor, status, metadata, verify_by,"
            " processing_until)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'creating', $16::jsonb,"
            " now() + make_interval(secs => $17), now() + make_interval(secs => $18))"
            f" ON CONFLICT ON CONSTRAINT transfers_tenant_key DO NOTHING RETURNING {COLUMNS}",
            t.transfer_id,
            t.kind,
            t.source_tenant_id,
            t.environment,
            t.idempotency_key,
            t.request_hash,
            t.sender_email,
            t.sender_phone,
            t.recipient_phone,
            t.destination_tenant_id,
            t.amount_minor,
            t.fee_minor,
            t.source_fee_minor,
            t.destination_fee_minor,
            t.network_fee_minor,
            t.metadata_json or "{}",
            float(t.verify_window_s),
            float(t.lease_s),
        )

    async def forget_refused(self, transfer_id: str) -> None:
        """A hold the ledger refused: the transfer never existed (its texts go with it)."""
        await self.pool.execute("DELETE FROM transfers WHERE transfer_id = $1 AND status = 'creating'", transfer_id)

    async def claim_unfinished(self, limit: int) -> list[asyncpg.Record]:
        """Rows left mid-way by a crash or a dependency that failed, whose lease ran out."""
        return await self.lease.claim_batch(
            self.pool,
            where="status IN ('creating', 'claiming', 'returning')",
            order_by="processing_until NULLS FIRST",
            limit=limit,
        )

    async def due(self, limit: int) -> list[asyncpg.Record]:
        """Open transfers whose PIN window or claim window has ended."""
        return list(
            await self.pool.fetch(
                "(SELECT transfer_id, 'verification_expired' AS reason FROM transfers"
                "  WHERE status = 'pending_verification' AND verify_by <= now() ORDER BY verify_by LIMIT $1)"
                " UNION ALL "
                "(SELECT transfer_id, 'claim_expired' AS reason FROM transfers"
                "  WHERE status = 'claimable' AND claim_expires_at <= now() ORDER BY claim_expires_at LIMIT $1)",
                limit,
            )
        )
