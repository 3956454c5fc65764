"""Claiming a transfer with its code, and cancelling one.

A claim code is found by its HMAC (the code alone names the transfer). A self-transfer is claimed
by its destination tenant only (`claim-transfer`); a send by whichever tenant the recipient uses
(`claim-currency`), if both tenants' transfer policy allows it. The claim moves the row to
`claiming` under its lock, so of two racing claims exactly one wins; the same claim sent again
(same code, tenant and player) answers the first result with `duplicate`, any other is 409.

Guessing codes is limited per tenant: a claim with an unknown or malformed code is recorded, and
past INVO_CLAIM_FAILURES_PER_TENANT_PER_MINUTE such failures in a minute every claim of that
tenant is 429 with Retry-After (80-bit codes make a guess hopeless; the limit makes it loud).
"""

from __future__ import annotations

import datetime
import math

import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors
from services.common.players import normalize_email
from services.transfers import codes
from services.transfers.deps import Deps, after, db_now
from services.transfers.policy import refusal
from services.transfers.releases import finish, start_return
from services.transfers.rules import ended, policy_refused
from services.transfers.store import COLUMNS, LIFECYCLE, OPEN, SELF, SEND

FAILURE_WINDOW_S = 60


class ClaimInProgress(errors.Conflict):
    default_error = "claim_in_progress"
    default_error_code = "CLAIM_IN_PROGRESS"


async def _limit(d: Deps, tenant_id: str) -> None:
    row = await d.pool.fetchrow(
        "SELECT count(*) AS n, min(created_at) AS oldest, now() AS now FROM claim_failures"
        " WHERE tenant_id = $1 AND created_at > now() - make_interval(secs => $2)",
        tenant_id,
        float(FAILURE_WINDOW_S),
    )
    if row["n"] >= d.rules.claim_failures_per_minute:
        wait = row["oldest"] + datetime.timedelta(seconds=FAILURE_WINDOW_S) - row["now"]
        wait_s = max(1, math.ceil(wait.total_seconds()))
        raise errors.RateLimited(
            f"Too many claims with unknown codes from this tenant; retry after {wait_s} seconds.",
            error_code="CLAIM_RATE_LIMITED",
            retry_after_s=wait_s,
        )


async def _failed(d: Deps, tenant_id: str, exc: errors.InvoError) -> errors.InvoError:
    await d.pool.execute("INSERT INTO claim_failures (tenant_id) VALUES ($1)", tenant_id)
    return exc


async def claim(
    d: Deps,
    tenant: tenants_pb2.Tenant,
    kind: str,
    typed_code: str,
    recipient_email: str,
    *,
    lease_s: float,
    deadline: float | None,
) -> tuple[asyncpg.Record, bool]:
    """The claimed transfer, and whether this claim was made before (a replay)."""
    email = normalize_email(recipient_email, field="player_email")
    await _limit(d, tenant.tenant_id)
    code = codes.parse_claim_code(typed_code)
    if code is None:
        raise await _failed(
            d,
            tenant.tenant_id,
            errors.InvalidRequest(
                "claim_code must be the 16-character code texted (XXXX-XXXX-XXXX-XXXX).",
                error_code="INVALID_CLAIM_CODE",
                extra={"param": "claim_code"},
            ),
        )
    digest = d.hasher.digest("claim", code, context="")
    row = await d.pool.fetchrow(f"SELECT {COLUMNS} FROM transfers WHERE claim_hash = $1", digest)
    if row is None:
        raise await _failed(
            d, tenant.tenant_id, errors.NotFound("No transfer has this claim code.", error_code="CLAIM_CODE_NOT_FOUND")
        )
    if row["kind"] != kind:
        call = "claim-currency" if row["kind"] == SEND else "claim-transfer"
        raise errors.Conflict(
            f"This claim code is a {row['kind'].replace('_', '-')}'s: claim it with {call}.",
            error_code="CLAIM_KIND_MISMATCH",
        )
    if kind == SELF and row["destination_tenant_id"] != tenant.tenant_id:
        raise errors.Forbidden(
            "This self-transfer goes to another tenant: only its destination may claim it.",
            error_code="NOT_TRANSFER_DESTINATION",
        )
    replay = await _replay(d, row, tenant.tenant_id, email, deadline=deadline)
    if replay is not None:
        return replay, True
    if row["status"] != "claimable":
        raise ended(row)
    source = await d.tenant(row["source_tenant_id"], deadline)
    refused = refusal(source, tenant)
    if refused is not None:
        raise policy_refused(refused.message, refused.code)
    async with d.pool.acquire() as conn, conn.transaction():
        locked = await d.store.locked(conn, row["transfer_id"])
        if locked is None:
            raise errors.Internal("a transfer vanished while it was being claimed")
        if locked["status"] != "claimable":
            row = locked
            moved = None
        else:
            now = await db_now(conn)
            if locked["claim_expires_at"] <= now:
                raise errors.Gone(
                    "This claim code expired; the funds go back to the sender.",
                    error_code="CLAIM_CODE_EXPIRED",
                    extra={"transfer_id": row["transfer_id"]},
                )
            moved = await LIFECYCLE.move(
                conn,
                row["transfer_id"],
                "claiming",
                source="api",
                sets={
                    "destination_tenant_id": tenant.tenant_id,
                    "recipient_email": email,
                    "processing_until": after(now, lease_s),
                },
            )
    if moved is None:  # another claim or an end came first
        replay = await _replay(d, row, tenant.tenant_id, email, deadline=deadline)
        if replay is not None:
            return replay, True
        raise ended(row)
    return await finish(d, moved, source="api", deadline=deadline), False


async def _replay(
    d: Deps, row: asyncpg.Record, tenant_id: str, email: str, *, deadline: float | None
) -> asyncpg.Record | None:
    """The first result of this very claim, if it was made before; a claim the sweep has not
    finished is finished now."""
    same = row["destination_tenant_id"] == tenant_id and row["recipient_email"] == email
    if not same or row["status"] not in ("claiming", "completed"):
        return None
    if row["status"] == "completed":
        return row
    leased = await d.store.lease.claim(d.pool, row["transfer_id"], where="status = 'claiming'")
    if leased is None:
        current = await d.store.find(row["transfer_id"])
        if current is not None and current["status"] == "completed":
            return current
        raise ClaimInProgress("This claim is being settled; retry in a moment.", retry_after_s=1)
    return await finish(d, leased, source="api", deadline=deadline)


async def cancel(
    d: Deps, tenant: tenants_pb2.Tenant, transfer_id: str, *, lease_s: float, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """The source gives a transfer up before it is claimed; a cancel repeated answers the first."""
    row, role = await d.store.visible(transfer_id, tenant.tenant_id)
    if role != "source":
        raise errors.Forbidden("Only the source tenant may cancel a transfer.", error_code="NOT_TRANSFER_SOURCE")
    if row["status"] in OPEN:
        done = await start_return(
            d,
            transfer_id,
            final="cancelled",
            reason="cancelled_by_tenant",
            source="api",
            lease_s=lease_s,
            deadline=deadline,
        )
        if done is not None:
            return done, False
        row, _ = await d.store.visible(transfer_id, tenant.tenant_id)
    if row["end_reason"] == "cancelled_by_tenant":
        if row["status"] == "returning":
            leased = await d.store.lease.claim(d.pool, transfer_id, where="status = 'returning'")
            if leased is not None:
                row = await finish(d, leased, source="api", deadline=deadline)
        return row, True
    raise ended(row)
