"""INVO's review of a payout: maker-checker, enforced here and not only in the gateway.

- An approver must be another operator than anyone who acted on the request: the operator who
  asked for it on the tenant's behalf (403 SELF_APPROVAL_FORBIDDEN), or one who approved it already
  (409 ALREADY_APPROVED_BY_OPERATOR).
- A payout above INVO_PAYOUT_DUAL_APPROVAL_USD_CENTS needs two different approvers: the first
  approval is recorded in the history ("approval 1 of 2") and the payout stays `requested`; the
  second moves it to `approved`.
- Approved, it is sent to the ACH provider at once (`progress.dispatch`); if the provider is away,
  the sweep sends it as soon as it is back (same idempotency key: once).
- A rejection (with its reason) voids the hold: the revenue is owed again.
Every decision is in the payout's history with `operator:<id>` as its source.
"""

from __future__ import annotations

import logging

import asyncpg

from services.common import errors, limits
from services.common.transitions import Lifecycle
from services.payouts import progress
from services.payouts.deps import Deps
from services.payouts.moves import catch_up_ledger, move
from services.payouts.store import LIFECYCLE, not_found

log = logging.getLogger("invo.payouts.review")


def _not_pending(row: asyncpg.Record) -> errors.Conflict:
    return errors.Conflict(
        f"This payout is {row['status']}: only a requested payout is reviewed.",
        error_code="PAYOUT_NOT_PENDING_REVIEW",
        extra={"payout_status": row["status"]},
    )


async def approve(d: Deps, payout_id: str, operator_id: str, *, deadline: float | None) -> asyncpg.Record:
    if not operator_id:
        raise errors.InvalidRequest("an approval needs the operator's id")
    source = f"operator:{operator_id}"
    approved = False
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.locked(conn, payout_id)
        if row is None:
            raise not_found()
        if row["status"] != "requested":
            raise _not_pending(row)
        if row["requested_by"] == source:
            raise errors.Forbidden(
                "You asked for this payout: another operator must approve it.", error_code="SELF_APPROVAL_FORBIDDEN"
            )
        earlier = [a["operator_id"] for a in await d.store.approvals(payout_id, conn)]
        if operator_id in earlier:
            raise errors.Conflict(
                "You approved this payout already: the second approval must come from another operator.",
                error_code="ALREADY_APPROVED_BY_OPERATOR",
            )
        await conn.execute(
            "INSERT INTO payout_approvals (payout_id, operator_id) VALUES ($1, $2)", payout_id, operator_id
        )
        count = len(earlier) + 1
        if count >= row["approvals_required"]:
            approvers = ", ".join([*earlier, operator_id])
            moved = await move(
                conn,
                payout_id,
                "approved",
                source=source,
                reason=f"approved by {approvers}",
                sets={"approved_at": await conn.fetchval("SELECT now()")},
            )
            if moved is None:
                raise errors.Internal("a locked payout could not move")
            approved = True
        else:
            await _note(LIFECYCLE, conn, payout_id, source, f"approval {count} of {row['approvals_required']}")
    if approved:
        try:
            await progress.dispatch(d, payout_id, source="provider", deadline=deadline)
        except Exception as exc:  # approved stands: the sweep sends it
            code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
            log.warning("payout %s approved; sending it left for the sweep (%s)", payout_id, code)
    current = await d.store.find(payout_id)
    if current is None:
        raise not_found()
    return current


async def _note(lifecycle: Lifecycle, conn: asyncpg.Connection, payout_id: str, source: str, reason: str) -> None:
    await lifecycle.note(conn, payout_id, "requested", source=source, reason=reason)
    await conn.execute("UPDATE payouts SET updated_at = now() WHERE payout_id = $1", payout_id)


async def reject(d: Deps, payout_id: str, operator_id: str, reason: str, *, deadline: float | None) -> asyncpg.Record:
    reason = reason.strip()
    if not reason or len(reason) > limits.REVIEW_REASON_LEN_MAX:
        raise errors.InvalidRequest(
            f"A rejection needs a reason of 1 to {limits.REVIEW_REASON_LEN_MAX} characters.",
            error_code="MISSING_PARAMETER" if not reason else "INVALID_PARAMETER",
            extra={"param": "reason"},
        )
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.locked(conn, payout_id)
        if row is None:
            raise not_found()
        if row["status"] != "requested":
            raise _not_pending(row)
        moved = await move(
            conn,
            payout_id,
            "rejected",
            source=f"operator:{operator_id}",
            reason=reason,
            sets={"reason": reason, "ended_at": await conn.fetchval("SELECT now()")},
        )
    if moved is None:
        raise errors.Internal("a locked payout could not move")
    await catch_up_ledger(d, moved, deadline=deadline)
    current = await d.store.find(payout_id)
    return current if current is not None else moved
