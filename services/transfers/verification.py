"""The sender's PIN: verify it, or text a new one.

A PIN is 6 digits from `secrets`, stored as an HMAC keyed by INVO_TRANSFER_CODE_KEY with the
transfer id in the message (a digest copied to another transfer never matches), compared in
constant time, valid INVO_TRANSFER_PIN_TTL_S. Wrong tries count per transfer, not per PIN (a new
PIN does not buy more guesses); the last allowed wrong try cancels the transfer and gives the hold
back. A transfer gets at most INVO_TRANSFER_PIN_SENDS_MAX PIN texts, INVO_TRANSFER_PIN_RESEND_COOLDOWN_S
apart, each under the SMS limits.

The right PIN makes the transfer claimable: a claim code (80 bits, Crockford base32) is made,
stored as an HMAC only, and texted to the sender's phone (a self-transfer; it is also answered
once to the source tenant, to show its user) or to the recipient's phone (a send; never to either
tenant).
"""

from __future__ import annotations

import math
import re

import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors
from services.transfers import codes
from services.transfers.deps import Deps, after, db_now
from services.transfers.policy import refusal
from services.transfers.releases import finish
from services.transfers.rules import ended, policy_refused
from services.transfers.store import LIFECYCLE, SELF, not_found
from services.transfers.wording import claim_text, pin_text

PIN_RE = re.compile(r"^[0-9]{6}$")


async def _locked_own(d: Deps, conn: asyncpg.Connection, tenant_id: str, transfer_id: str) -> asyncpg.Record:
    row = await d.store.locked(conn, transfer_id) if transfer_id.startswith("trf_") else None
    if row is None or row["source_tenant_id"] != tenant_id or row["status"] == "creating":
        raise not_found()  # only the source verifies (the destination is not told the transfer exists yet)
    return row


async def _allowed(d: Deps, tenant: tenants_pb2.Tenant, transfer_id: str, deadline: float | None) -> None:
    """The transfer policy, as every transfer call checks it: a self-transfer under both tenants'
    flags as they are now, a send under the source's outgoing flag (its destination is not known
    yet). A refusal changes nothing (no PIN try is counted, no text sent); a cancel stays possible."""
    row = await d.store.find(transfer_id)
    if row is None or row["source_tenant_id"] != tenant.tenant_id:
        raise not_found()
    if row["kind"] == SELF:
        refused = refusal(tenant, await d.tenant(row["destination_tenant_id"], deadline))
        if refused is not None:
            raise policy_refused(refused.message, refused.code)
    elif not tenant.allows_outgoing_transfers:
        raise policy_refused(
            "This tenant does not allow outgoing transfers (allows_outgoing_transfers).", "SOURCE_OUTGOING_DISABLED"
        )


async def verify(
    d: Deps, tenant: tenants_pb2.Tenant, transfer_id: str, pin: str, *, lease_s: float, deadline: float | None
) -> tuple[asyncpg.Record, str]:
    """The transfer now claimable, and its claim code for the source tenant ("" for a send)."""
    if not PIN_RE.match(pin):
        raise errors.InvalidRequest(
            "pin must be the 6 digits texted to the sender.", error_code="INVALID_PARAMETER", extra={"param": "pin"}
        )
    await _allowed(d, tenant, transfer_id, deadline)
    failure: errors.InvoError | None = None
    code = ""
    message_id = None
    locked_row = None
    async with d.pool.acquire() as conn, conn.transaction():
        row = await _locked_own(d, conn, tenant.tenant_id, transfer_id)
        if row["status"] != "pending_verification":
            raise ended(row)
        now = await db_now(conn)
        if row["pin_expires_at"] <= now:
            raise errors.Gone(
                "This PIN expired; ask for a new one (resend-sms).",
                error_code="PIN_EXPIRED",
                extra={"pin_sends_remaining": max(0, d.rules.pin_sends_max - row["pin_sends"])},
            )
        if not d.hasher.matches(bytes(row["pin_hash"]), "pin", pin, context=transfer_id):
            attempts = row["pin_attempts"] + 1
            if attempts >= d.rules.pin_attempts_max:
                locked_row = await LIFECYCLE.move(
                    conn,
                    transfer_id,
                    "returning",
                    source="api",
                    reason="pin_locked",
                    sets={
                        "pin_attempts": attempts,
                        "pin_hash": None,
                        "return_status": "cancelled",
                        "end_reason": "pin_locked",
                        "processing_until": after(now, lease_s),
                    },
                )
                await d.texts.supersede(conn, transfer_id, "")
                failure = errors.Forbidden(
                    "Too many wrong PINs: the transfer is cancelled and the funds go back to the sender.",
                    error_code="PIN_LOCKED",
                    extra={"transfer_id": transfer_id},
                )
            else:
                await conn.execute(
                    "UPDATE transfers SET pin_attempts = $2, updated_at = now() WHERE transfer_id = $1",
                    transfer_id,
                    attempts,
                )
                failure = errors.InvalidRequest(
                    "That PIN is not the one texted to the sender.",
                    error_code="INCORRECT_PIN",
                    extra={"param": "pin", "attempts_remaining": d.rules.pin_attempts_max - attempts},
                )
        else:
            code = codes.new_claim_code()
            ttl_s = d.rules.claim_ttl_self_s if row["kind"] == SELF else d.rules.claim_ttl_send_s
            claim_expires_at = after(now, ttl_s)
            moved = await LIFECYCLE.move(
                conn,
                transfer_id,
                "claimable",
                source="api",
                sets={
                    "pin_hash": None,
                    "claim_hash": d.hasher.digest("claim", code, context=""),
                    "claim_expires_at": claim_expires_at,
                    "verified_at": now,
                },
            )
            if moved is None:
                raise errors.Internal("a locked transfer could not move")
            await d.texts.supersede(conn, transfer_id, "pin")
            message_id = await d.texts.reserved(conn, transfer_id, "claim")
            if message_id is not None:
                body = claim_text(row, code, currency_name=tenant.currency_name, expires_at=claim_expires_at)
                await d.texts.fill(conn, message_id, body=body, send_by=claim_expires_at)
            row = moved
    if locked_row is not None:
        try:
            await finish(d, locked_row, source="api", deadline=deadline)
        except Exception:  # noqa: S110 - the row stays `returning`: the sweep gives the hold back
            pass
    if failure is not None:
        raise failure
    await d.deliver(message_id)
    return row, code if row["kind"] == SELF else ""


async def resend(d: Deps, tenant: tenants_pb2.Tenant, transfer_id: str, *, deadline: float | None) -> asyncpg.Record:
    """A new PIN texted to the sender; the previous one stops working."""
    await _allowed(d, tenant, transfer_id, deadline)
    async with d.pool.acquire() as conn, conn.transaction():
        row = await _locked_own(d, conn, tenant.tenant_id, transfer_id)
        if row["status"] != "pending_verification":
            raise ended(row)
        now = await db_now(conn)
        if row["pin_sends"] >= d.rules.pin_sends_max:
            raise errors.Conflict(
                f"This transfer has had its {d.rules.pin_sends_max} PIN texts; cancel it and start again.",
                error_code="PIN_SEND_LIMIT_REACHED",
                extra={"transfer_id": transfer_id},
            )
        wait_s = (after(row["pin_sent_at"], d.rules.pin_resend_cooldown_s) - now).total_seconds()
        if wait_s > 0:
            raise errors.RateLimited(
                f"A PIN was texted moments ago; ask again in {math.ceil(wait_s)} seconds.",
                error_code="PIN_RESEND_TOO_SOON",
                retry_after_s=math.ceil(wait_s),
            )
        if row["verify_by"] <= now:
            raise errors.Gone("This transfer waited too long for its PIN and expires.", error_code="TRANSFER_EXPIRED")
        await d.texts.supersede(conn, transfer_id, "pin")
        (message_id,) = await d.texts.reserve(
            conn, transfer_id=transfer_id, tenant_id=tenant.tenant_id, texts=[("pin", row["sender_phone"])]
        )
        pin = codes.new_pin()
        pin_expires_at = min(after(now, d.rules.pin_ttl_s), row["verify_by"])
        updated = await conn.fetchrow(
            "UPDATE transfers SET pin_hash = $2, pin_expires_at = $3, pin_sends = pin_sends + 1, pin_sent_at = $4,"
            " updated_at = now() WHERE transfer_id = $1 RETURNING transfer_id",
            transfer_id,
            d.hasher.digest("pin", pin, context=transfer_id),
            pin_expires_at,
            now,
        )
        if updated is None:
            raise errors.Internal("a locked transfer could not be updated")
        await d.texts.fill(conn, message_id, body=pin_text(pin, ttl_s=d.rules.pin_ttl_s), send_by=pin_expires_at)
    await d.deliver(message_id)
    current = await d.store.find(transfer_id)
    if current is None:
        raise not_found()
    return current
