"""A partner asks for a payout (or an operator on its behalf), and may cancel it while it waits.

1. The request is checked (amount, contact, bank details) and the row inserted in `creating`,
   leased to this request, its account number sealed. The partner's idempotency key is unique per
   tenant: a retry finds the row and answers it (a retry never pays twice); another body with the
   key is 400 IDEMPOTENCY_KEY_REUSED. The fingerprint holds an HMAC of the account number, never
   the number.
2. The ledger holds the amount on the tenant's owed revenue, keyed by the payout id, so two
   requests together can never take more than is owed. Refused, the row is deleted (nothing
   happened; the key is free again) and the answer is 400 AMOUNT_EXCEEDS_OWED.
3. The row moves to `requested`, announced by `payout.status_changed` (from null).

A crash between the steps leaves a `creating` row whose lease runs out: the sweep, or the
partner's retry with the same key, drives it from step 2.
"""

from __future__ import annotations

import asyncpg
from invo.v1 import payouts_pb2

from services.common import errors, idempotency, ids, limits
from services.common.crypto import keyed_hash
from services.common.players import normalize_email
from services.payouts import bank
from services.payouts.deps import Deps
from services.payouts.moves import catch_up_ledger, move
from services.payouts.store import COLUMNS, not_found


class PayoutInProgress(errors.Conflict):
    default_error = "payout_in_progress"
    default_error_code = "PAYOUT_IN_PROGRESS"


def _checked(d: Deps, r: payouts_pb2.RequestPayoutRequest) -> tuple[str, str, str]:
    """(contact email, routing number, account number) once every field is known good."""
    if not d.min_usd_cents <= r.usd_cents <= limits.PAYOUT_USD_CENTS_MAX:
        raise errors.InvalidRequest(
            f"usd_amount must be from {d.min_usd_cents / 100:.2f} to {limits.PAYOUT_USD_CENTS_MAX // 100}.",
            error_code="INVALID_AMOUNT",
            extra={"param": "usd_amount"},
        )
    holder = r.account_holder_name.strip()
    if not holder or len(holder) > limits.ACCOUNT_HOLDER_LEN_MAX or any(ord(c) < 32 for c in holder):
        raise errors.InvalidRequest(
            f"account_holder_name must be 1 to {limits.ACCOUNT_HOLDER_LEN_MAX} printable characters.",
            error_code="INVALID_PARAMETER",
            extra={"param": "account_holder_name"},
        )
    if r.account_type not in bank.ACCOUNT_TYPES:
        raise errors.InvalidRequest(
            "account_type must be checking or savings.", error_code="INVALID_PARAMETER", extra={"param": "account_type"}
        )
    try:
        contact = normalize_email(r.contact_email, field="contact_email")
    except errors.InvalidRequest:
        raise errors.InvalidRequest(
            "contact_email must be a valid email address.",
            error_code="INVALID_PARAMETER",
            extra={"param": "contact_email"},
        ) from None
    return contact, bank.routing_number(r.routing_number), bank.account_number(r.account_number)


async def request_payout(
    d: Deps, r: payouts_pb2.RequestPayoutRequest, *, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """The payout and whether this was a replay of its key."""
    key = idempotency.valid_key(r.idempotency_key)
    contact, routing, account = _checked(d, r)
    requested_by = f"operator:{r.operator_id}" if r.operator_id else "partner"
    digest = idempotency.fingerprint(
        {
            "usd_cents": r.usd_cents,
            "contact_email": contact,
            "account_holder_name": r.account_holder_name.strip(),
            "routing_number": routing,
            "account": keyed_hash(d.pepper, f"payout-account:{account}").hex(),
            "account_type": r.account_type,
            "requested_by": requested_by,
        }
    )
    existing = await d.store.by_key(d.pool, r.tenant_id, key)
    if existing is not None:
        return await _replay(d, existing, digest, key, deadline=deadline)
    payout_id = ids.new_id("po")
    sealed = d.vault.seal(account, payout_id=payout_id)
    approvals = 2 if r.usd_cents > d.dual_approval_usd_cents else 1
    row = await d.pool.fetchrow(
        "INSERT INTO payouts (payout_id, tenant_id, environment, idempotency_key, request_hash, requested_by,"
        " usd_cents, amount_minor, contact_email, account_holder_name, routing_number, account_type, account_kid,"
        " account_sealed, account_last4, approvals_required, status, processing_until)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'creating',"
        " now() + make_interval(secs => $17))"
        f" ON CONFLICT ON CONSTRAINT payouts_tenant_key DO NOTHING RETURNING {COLUMNS}",
        payout_id,
        r.tenant_id,
        r.environment,
        key,
        digest,
        requested_by,
        r.usd_cents,
        r.usd_cents * 10,
        contact,
        r.account_holder_name.strip(),
        routing,
        r.account_type,
        sealed.kid,
        sealed.blob,
        sealed.last4,
        approvals,
        float(d.lease_s),
    )
    if row is None:  # the same key, a moment ago, from a concurrent request
        existing = await d.store.by_key(d.pool, r.tenant_id, key)
        if existing is None:
            raise PayoutInProgress("A payout with this idempotency_key is being created; retry the request.")
        return await _replay(d, existing, digest, key, deadline=deadline)
    return await drive(d, row, source=requested_by, deadline=deadline), False


async def _replay(
    d: Deps, row: asyncpg.Record, digest: bytes, key: str, *, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    idempotency.check_replay(row["request_hash"], digest, key=key)
    if row["status"] != "creating":
        return row, True
    claimed = await d.store.lease.claim(d.pool, row["payout_id"], where="status = 'creating'")
    if claimed is None:
        raise PayoutInProgress(
            "The first request with this idempotency_key is still creating the payout; retry in a moment.",
            retry_after_s=1,
            extra={"payout_id": row["payout_id"]},
        )
    return await drive(d, claimed, source=row["requested_by"], deadline=deadline), True


async def drive(d: Deps, row: asyncpg.Record, *, source: str, deadline: float | None) -> asyncpg.Record:
    """Steps 2 and 3 for a `creating` row whose lease the caller holds."""
    payout_id = row["payout_id"]
    try:
        held = await d.ledger.hold(row["tenant_id"], payout_id, row["amount_minor"], deadline=deadline)
    except errors.PaymentRequired:
        await d.store.forget_refused(payout_id)
        raise errors.InvalidRequest(
            "usd_amount is more than this tenant's owed revenue not already held for other payouts"
            " (GET /api/revenue: available_usd).",
            error_code="AMOUNT_EXCEEDS_OWED",
            extra={"param": "usd_amount"},
        ) from None
    except errors.InvalidRequest:
        await d.store.forget_refused(payout_id)
        raise
    except Exception:
        await d.store.lease.release(d.pool, payout_id)
        raise
    async with d.pool.acquire() as conn, conn.transaction():
        moved = await move(
            conn,
            payout_id,
            "requested",
            source=source,
            sets={"hold_transaction_id": held, "processing_until": None},
        )
    if moved is None:  # another worker finished it first
        current = await d.store.find(payout_id)
        if current is None:
            raise errors.Internal("a payout vanished while it was being created")
        return current
    return moved


async def cancel(d: Deps, tenant_id: str, payout_id: str, *, deadline: float | None) -> tuple[asyncpg.Record, bool]:
    """The partner gives up a payout still waiting for review; a cancel repeated answers the first."""
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.locked(conn, payout_id)
        if row is None or row["tenant_id"] != tenant_id:
            raise not_found()
        if row["status"] == "cancelled":
            return row, True
        if row["status"] != "requested":
            raise errors.Conflict(
                f"This payout is {row['status']}: only a requested payout can be cancelled.",
                error_code="PAYOUT_NOT_CANCELLABLE",
                extra={"payout_status": row["status"]},
            )
        moved = await move(
            conn,
            payout_id,
            "cancelled",
            source="partner",
            reason="cancelled by the partner",
            sets={"reason": "cancelled by the partner", "ended_at": await conn.fetchval("SELECT now()")},
        )
    if moved is None:
        raise errors.Internal("a locked payout could not move")
    await catch_up_ledger(d, moved, deadline=deadline)
    return await d.store.visible(payout_id, tenant_id), False
